"""Benchmark ground truth: the revisited Oxford/Paris pickles and a plain JSON format."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .errors import RetrievalError

KNOWN = ("roxford5k", "rparis6k")


@dataclass(frozen=True)
class Query:
    image: str  # absolute path
    bbox: tuple[float, float, float, float] | None
    easy: np.ndarray
    hard: np.ndarray
    junk: np.ndarray


@dataclass(frozen=True)
class Benchmark:
    name: str
    database: tuple[str, ...]  # absolute paths; ranks index into this
    queries: tuple[Query, ...]
    protocols: tuple[str, ...]  # ("easy", "medium", "hard") or ("all",)


class _PlainUnpickler(pickle.Unpickler):
    """Containers, strings and numbers only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: ground truth must be plain data")


def read_gnd(path: str | Path) -> dict[str, Any]:
    """The revisitop pickle, checked: imlist and qimlist lists of names, gnd a list of one dict per
    query with easy/hard/junk lists of database indices and bbx four numbers (or absent)."""
    try:
        with open(path, "rb") as f:
            data = _PlainUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise RetrievalError(f"cannot read ground truth {path} ({e}); expected the official gnd_*.pkl") from e
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise RetrievalError(f"{path} is not a revisitop ground-truth file (needs imlist, qimlist, gnd)")
    check = _Checker(path, "; expected the official gnd_*.pkl layout (docs/eval.md)")
    check.names(data["imlist"], "imlist")
    check.names(data["qimlist"], "qimlist")
    gnd = check.of(data["gnd"], list, "gnd", "a list with one entry per query")
    if len(gnd) != len(data["qimlist"]):
        check.fail(f"gnd has {len(gnd)} entries but qimlist {len(data['qimlist'])}")
    n = len(data["imlist"])
    for i, g in enumerate(gnd):
        check.of(g, dict, f"gnd[{i}]", "a dict with easy, hard, junk and bbx")
        for key in ("easy", "hard", "junk"):
            check.indices(g.get(key, []), f"gnd[{i}][{key!r}]", n)
        if g.get("bbx") is not None:
            check.box(g["bbx"], f"gnd[{i}]['bbx']")
    return data


def load_revisited(data_dir: str | Path, name: str, *, crop: bool = True) -> Benchmark:
    """DATA/<name>/gnd_<name>.pkl and DATA/<name>/jpg/<image>.jpg (the revisitop layout)."""
    root = Path(data_dir) / name
    gnd_file = root / f"gnd_{name}.pkl"
    if not gnd_file.is_file():
        raise RetrievalError(
            f"no {gnd_file}; expected the revisitop layout DATA/{name}/gnd_{name}.pkl and DATA/{name}/jpg/*.jpg"
        )
    data = read_gnd(gnd_file)
    jpg = root / "jpg"

    def image(stem: str) -> str:
        return str((jpg / f"{stem}.jpg").resolve())

    database = tuple(image(s) for s in data["imlist"])
    missing = [p for p in database[:1000] if not Path(p).is_file()]
    if missing:
        raise RetrievalError(f"{len(missing)}+ database images missing under {jpg}, e.g. {missing[0]}")
    queries = []
    for stem, g in zip(data["qimlist"], data["gnd"]):
        bbox = _box(g.get("bbx")) if crop else None
        queries.append(Query(image(stem), bbox, _ints(g.get("easy")), _ints(g.get("hard")), _ints(g.get("junk"))))
    return Benchmark(name, database, tuple(queries), ("easy", "medium", "hard"))


def load_json(path: str | Path, *, crop: bool = True) -> Benchmark:
    """Users' own sets. Paths are relative to the JSON file's folder:

    {"database": ["a.jpg", ...],
     "queries": [{"image": "q.jpg", "bbox": [x1, y1, x2, y2] or null,
                  "positives": ["a.jpg", ...], "junk": ["b.jpg", ...]}]}
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RetrievalError(f"cannot read ground truth {path} ({type(e).__name__}: {e}); see docs/eval.md") from e
    check = _Checker(path, "; see docs/eval.md for the format")
    check.of(data, dict, "the file", 'an object with "database" and "queries"')
    for key in ("database", "queries"):
        if key not in data:
            check.fail(f'no "{key}" key')
    base = path.parent
    database = tuple(str((base / p).resolve()) for p in check.names(data["database"], '"database"'))
    where = {p: i for i, p in enumerate(database)}

    def ids(names: Any, field: str) -> np.ndarray:
        out = []
        for n in check.names(names, field):
            full = str((base / n).resolve())
            if full not in where:
                check.fail(f'{field} lists {n}, which is not in "database"')
            out.append(where[full])
        return np.array(out, np.int64)

    queries = []
    for i, q in enumerate(check.of(data["queries"], list, '"queries"', "a list of objects")):
        check.of(q, dict, f"queries[{i}]", 'an object with "image" and "positives"')
        image = check.of(q.get("image"), str, f'queries[{i}]["image"]', "a file name")
        box = None if q.get("bbox") is None else check.box(q["bbox"], f'queries[{i}]["bbox"]')
        queries.append(Query(str((base / image).resolve()), box if crop else None,
                             ids(q.get("positives", []), f'queries[{i}]["positives"]'), np.zeros(0, np.int64),
                             ids(q.get("junk", []), f'queries[{i}]["junk"]')))
    if queries and not any(len(q.easy) for q in queries):  # checked now, before the database is embedded
        check.fail('no query lists any "positives", so there is nothing to score')
    return Benchmark(path.stem, database, tuple(queries), ("all",))


class _Checker:
    """Schema checks of a ground-truth file: each failure is one RetrievalError naming the file,
    the field and what it should hold."""

    def __init__(self, path: str | Path, hint: str) -> None:
        self.path, self.hint = path, hint

    def fail(self, what: str) -> NoReturn:
        raise RetrievalError(f"ground truth {self.path}: {what}{self.hint}")

    def of(self, value: Any, kind: type, field: str, expected: str) -> Any:
        if not isinstance(value, kind):
            self.fail(f"{field} must be {expected}, not {type(value).__name__} {_brief(value)}")
        return value

    def names(self, value: Any, field: str) -> list[str]:
        self.of(value, list, field, "a list of file names")
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            self.fail(f"{field} must hold file names (strings), found {type(bad[0]).__name__} {_brief(bad[0])}")
        return list(value)

    def indices(self, value: Any, field: str, n: int) -> None:
        a = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
        if a is None or a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            self.fail(f"{field} must be a list of database indices, not {type(value).__name__} {_brief(value)}")
        if a.size and (a.min() < 0 or a.max() >= n):
            self.fail(f"{field} holds index {int(a.max() if a.max() >= n else a.min())}, outside 0..{n - 1}")

    def box(self, value: Any, field: str) -> tuple[float, float, float, float]:
        ok = isinstance(value, (list, tuple, np.ndarray)) and len(value) == 4
        try:
            x1, y1, x2, y2 = (float(v) for v in value) if ok else (0.0, 0.0, 0.0, 0.0)
        except (TypeError, ValueError):
            ok = False
        if not ok or not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            self.fail(f"{field} must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, not {_brief(value)}")
        return x1, y1, x2, y2


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _ints(values: Any) -> np.ndarray:
    return np.asarray([] if values is None else values, dtype=np.int64).ravel()


def _box(values: Any) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2

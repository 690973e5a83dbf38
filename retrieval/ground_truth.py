"""Benchmark ground truth (what `retrieve eval` scores against): the revisited Oxford/Paris pickles and a plain JSON
format. The speed benchmarks are scripts/bench_*.py."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import pickletools
import reprlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .errors import RetrievalError
from .types import shown

log = logging.getLogger(__name__)

KNOWN = ("roxford5k", "rparis6k")
# The official gnd files are 150 KB (roxford5k) and 277 KB (rparis6k); one of 64 MiB would list
# millions of images. The bound keeps a hostile or mistaken file from being read into memory whole.
MAX_GND_BYTES = 64 * 2**20
GND_FIX = "fix: use the official gnd_*.pkl from revisitop (docs/eval.md)"


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
    query with easy/hard/junk lists of database indices and bbx four numbers (or absent). An index
    listed twice in one list is kept once (with a warning); one in two of easy/hard/junk is refused."""
    raw = _read_bounded(path)
    try:
        for _ in pickletools.genops(raw):  # every length the file claims is checked against what it holds
            pass                          # before the unpickler allocates anything for it
        data = _PlainUnpickler(io.BytesIO(raw)).load()
    except Exception as e:  # no class is ever looked up, so only the unpickler's own code ran:
        # whatever it raised (truncation, a bad opcode, an unhashable key, MemoryError) is the file's doing
        raise RetrievalError(f"cannot read ground truth {path} ({_why(e)}); {GND_FIX}") from None
    check = _Checker(path, f"; {GND_FIX}")
    check.of(data, dict, "the file", "a dict with imlist, qimlist and gnd")
    for key in ("imlist", "qimlist", "gnd"):
        if key not in data:
            check.fail(f"no {key!r} key (a revisitop ground-truth file has imlist, qimlist and gnd)")
    check.names(data["imlist"], "imlist")
    check.names(data["qimlist"], "qimlist")
    gnd = check.of(data["gnd"], list, "gnd", "a list with one entry per query")
    if len(gnd) != len(data["qimlist"]):
        check.fail(f"gnd has {len(gnd)} entries but qimlist {len(data['qimlist'])}")
    imlist, checked = data["imlist"], []
    for i, g in enumerate(gnd):
        check.of(g, dict, f"gnd[{i}]", "a dict with easy, hard, junk and bbx")
        lists = {key: check.indices(g[key], f"gnd[{i}][{key!r}]", len(imlist)) for key in ("easy", "hard", "junk")
                 if key in g}
        lists = check.once(lists, f"gnd[{i}] (query {shown(data['qimlist'][i])})",
                           lambda j: f"index {j} ({shown(imlist[j])})")
        if g.get("bbx") is not None:
            check.box(g["bbx"], f"gnd[{i}]['bbx']")
        checked.append({**g, **lists})
    return {**data, "gnd": checked}


def _read_bounded(path: str | Path) -> bytes:
    """The file's bytes, refused unread past MAX_GND_BYTES (read(n) would allocate n at once, so
    the file's own size is asked first)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_GND_BYTES:
                raise RetrievalError(f"ground truth {path} is {size} bytes, over the {MAX_GND_BYTES >> 20} MiB a "
                                     f"ground-truth pickle may hold (the official ones are under 1 MB); {GND_FIX}")
            raw = f.read(size + 1)
    except OSError as e:
        raise RetrievalError(f"cannot read ground truth {path} ({_why(e)}); {GND_FIX}") from None
    if len(raw) != size:
        raise RetrievalError(f"ground truth {path} changed while it was read ({size} bytes, then {len(raw)}); fix: "
                             f"run again once it is written")
    return raw


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


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
    return _warn_unlisted_self(gnd_file, Benchmark(name, database, tuple(queries), ("easy", "medium", "hard")))


def load_json(path: str | Path, *, crop: bool = True) -> Benchmark:
    """Users' own sets. Paths are relative to the JSON file's folder:

    {"database": ["a.jpg", ...],
     "queries": [{"image": "q.jpg", "bbox": [x1, y1, x2, y2] or null,
                  "positives": ["a.jpg", ...], "junk": ["b.jpg", ...]}]}
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: arrays nested past Python's limit
        raise RetrievalError(f"cannot read ground truth {path} ({_why(e)}); see docs/eval.md") from None
    check = _Checker(path, "; see docs/eval.md for the format")
    check.of(data, dict, "the file", 'an object with "database" and "queries"')
    for key in ("database", "queries"):
        if key not in data:
            check.fail(f'no "{key}" key')
    base = path.parent
    database = tuple(str((base / p).resolve()) for p in check.names(data["database"], '"database"'))
    where = {p: i for i, p in enumerate(database)}

    def ids(names: Any, field: str) -> list[int]:
        out = []
        for n in check.names(names, field):
            full = str((base / n).resolve())
            if full not in where:
                check.fail(f'{field} lists {n}, which is not in "database"')
            out.append(where[full])
        return out

    queries = []
    for i, q in enumerate(check.of(data["queries"], list, '"queries"', "a list of objects")):
        check.of(q, dict, f"queries[{i}]", 'an object with "image" and "positives"')
        image = check.of(q.get("image"), str, f'queries[{i}]["image"]', "a file name")
        box = None if q.get("bbox") is None else check.box(q["bbox"], f'queries[{i}]["bbox"]')
        lists = check.once({f'"{key}"': ids(q.get(key, []), f'queries[{i}]["{key}"]') for key in ("positives", "junk")},
                           f'queries[{i}] ("{shown(image)}")', lambda j: shown(data["database"][j]))
        queries.append(Query(str((base / image).resolve()), box if crop else None, _ints(lists['"positives"']),
                             _ints([]), _ints(lists['"junk"'])))
    if queries and not any(len(q.easy) for q in queries):  # checked now, before the database is embedded
        check.fail('no query lists any "positives", so there is nothing to score')
    return _warn_unlisted_self(path, Benchmark(path.stem, database, tuple(queries), ("all",)))


def _warn_unlisted_self(path: str | Path, bench: Benchmark) -> Benchmark:
    """A query whose own image is in the database but in none of its lists will find itself near
    the top and count it as a wrong answer: said once, since the file may mean it (docs/eval.md)."""
    where = {p: i for i, p in enumerate(bench.database)}
    unlisted = [f"queries[{i}] ({shown(Path(q.image).name)})" for i, q in enumerate(bench.queries)
                if q.image in where and not any(where[q.image] in a for a in (q.easy, q.hard, q.junk))]
    if unlisted:
        log.warning("ground truth %s: %s: the query's own image is in the database but neither a positive nor junk, "
                    "so it counts as a wrong answer where it ranks; list it under junk to leave it out of the score",
                    shown(str(path)), _some(unlisted))
    return bench


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

    def indices(self, value: Any, field: str, n: int) -> list[int]:
        """A list of ints in 0..n-1, checked item by item (never through numpy, which recurses into
        whatever nesting a hostile file holds)."""
        bad = [v for v in value if type(v) is not int] if isinstance(value, (list, tuple)) else [value]
        if bad:
            self.fail(f"{field} must be a list of database indices, found {type(bad[0]).__name__} {_brief(bad[0])}")
        outside = [v for v in value if not 0 <= v < n]
        if outside:
            self.fail(f"{field} holds index {outside[0]}, outside 0..{n - 1}")
        return list(value)

    def once(self, lists: dict[str, list[int]], who: str, name: Callable[[int], str]) -> dict[str, list[int]]:
        """Each list with its repeats dropped (order kept, one warning line naming them); an item in
        two of the lists (a positive that is also junk) is refused: the file contradicts itself."""
        seen: dict[int, str] = {}
        for field, items in lists.items():
            for j in dict.fromkeys(items):
                if j in seen:
                    self.fail(f"{who} lists {name(j)} both in {seen[j]} and in {field}; keep it in one of them")
                seen[j] = field
        repeats = {f: [j for j, c in Counter(items).items() if c > 1] for f, items in lists.items()}
        said = [f"{_some(map(name, js))} in {f}" for f, js in repeats.items() if js]
        if said:
            log.warning("ground truth %s: %s lists %s more than once; each is counted once",
                        shown(str(self.path)), who, " and ".join(said))
        return {f: list(dict.fromkeys(items)) for f, items in lists.items()}

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
    """A short repr, bounded in depth too: a self-referential or deeply nested value is not recursed into."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 2, 40, 40
    text = short.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _some(names: Iterable[str], most: int = 5) -> str:
    shown_ = list(names)
    return ", ".join(shown_[:most]) + (f" and {len(shown_) - most} more" if len(shown_) > most else "")


def _ints(values: Any) -> np.ndarray:
    return np.asarray([] if values is None else values, dtype=np.int64).ravel()


def _box(values: Any) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2

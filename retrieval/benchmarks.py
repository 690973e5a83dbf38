"""Benchmark ground truth: the revisited Oxford/Paris pickles and a plain JSON format."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    try:
        with open(path, "rb") as f:
            data = _PlainUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise RetrievalError(f"cannot read ground truth {path} ({e}); expected the official gnd_*.pkl") from e
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise RetrievalError(f"{path} is not a revisitop ground-truth file (needs imlist, qimlist, gnd)")
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
        base = path.parent
        database = tuple(str((base / p).resolve()) for p in data["database"])
        where = {p: i for i, p in enumerate(database)}

        def ids(names: list[str], q: str) -> np.ndarray:
            out = []
            for n in names:
                full = str((base / n).resolve())
                if full not in where:
                    raise RetrievalError(f"{path}: query {q} lists {n}, which is not in \"database\"")
                out.append(where[full])
            return np.array(out, np.int64)

        queries = []
        for q in data["queries"]:
            bbox = _box(q.get("bbox")) if crop else None
            queries.append(Query(str((base / q["image"]).resolve()), bbox,
                                 ids(q.get("positives", []), q["image"]), np.zeros(0, np.int64),
                                 ids(q.get("junk", []), q["image"])))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RetrievalError(f"cannot read ground truth {path} ({type(e).__name__}: {e}); see docs/eval.md") from e
    return Benchmark(path.stem, database, tuple(queries), ("all",))


def _ints(values: Any) -> np.ndarray:
    return np.asarray([] if values is None else values, dtype=np.int64).ravel()


def _box(values: Any) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2

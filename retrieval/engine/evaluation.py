"""`retrieve eval`: index a benchmark's database, embed its queries, rank exactly, score."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .. import whitening as wh
from ..arrays import l2n
from ..benchmarks import Benchmark
from ..config import EngineConfig, deep_merge, default_index_dir
from ..errors import RetrievalError, UsageError
from ..store import PathFilter
from ..evaluate import KAPPAS, QueryTruth, compute_map, protocol_truth
from .files import atomic_write
from .index import Index
from .settings import fingerprint_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, dict[str, float]]  # protocol -> {"mAP", "mP@1", "mP@5", "mP@10"} in [0, 1]
    ranks: np.ndarray  # (n_db + n_distractors, n_queries), indices into the database list
    report: dict[str, Any]  # metrics + everything needed to reproduce them


def eval_index_dir(name: str, overrides: dict[str, Any]) -> Path:
    """A cached index per benchmark and descriptor setup, beside the default index."""
    cfg = EngineConfig.from_dict(deep_merge(EngineConfig().to_dict(), overrides))
    key = json.dumps({**fingerprint_fields(cfg), "weights": cfg.backbone.weights}, sort_keys=True)
    return default_index_dir().parent / "eval" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _database(idx: Index, files: Sequence[str], distractors: Sequence[str],
              on_progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, int]:
    """Raw descriptors in database order (then distractors); returns (x, n_distractors)."""
    idx.update(list(files) + list(distractors), on_progress=on_progress)
    ids, x = idx.store.descriptors()
    paths = idx.store.paths(ids)
    row_of = {paths[int(i)]: r for r, i in enumerate(ids)}
    missing = [f for f in files if f not in row_of]
    if missing:
        raise RetrievalError(f"{len(missing)} database images could not be indexed, e.g. {missing[0]}; "
                             f"see `retrieve info --index {idx.path}`")
    in_db = set(files)
    under = PathFilter(distractors)
    extra = sorted(p for p in row_of if p not in in_db and p in under)
    order = [row_of[f] for f in files] + [row_of[p] for p in extra]
    return x[order], len(extra)


def evaluate(
    bench: Benchmark,
    *,
    overrides: dict[str, Any],
    index_dir: Path | None = None,
    whiten_from: Benchmark | None = None,
    whiten_self: bool = False,
    distractors: Sequence[str | Path] = (),
    crop: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EvalResult:
    """Run the protocol. Whitening is never learned on the test set unless `whiten_self`."""
    if whiten_self and whiten_from is not None:
        raise UsageError("choose one whitening source: another benchmark or (explicitly) the test set itself")
    overrides = deep_merge(overrides, {"whitening": {"enabled": False}})  # eval whitens explicitly, below

    def progress(stage: str) -> Callable[[int, int], None] | None:
        return None if on_progress is None else (lambda done, total: on_progress(stage, done, total))

    where = index_dir or eval_index_dir(bench.name, overrides)
    extra = [str(Path(d).resolve()) for d in distractors]
    with Index.open_or_create(where, overrides) as idx:
        xb, n_distractors = _database(idx, bench.database, extra, progress("database"))
        xq = np.concatenate([_query(idx, q.image, q.bbox, i, len(bench.queries), progress("queries"))
                             for i, q in enumerate(bench.queries)])
        weights_id = idx.store.get_meta("weights_id")
        config = idx.config
    whitening_source = "none (L2 only)"
    w: wh.Whitening | None = None
    if whiten_self:
        w = wh.fit(xb[: len(bench.database)], dim=config.whitening.dim)
        whitening_source = f"{bench.name} (the test set itself, chosen explicitly)"
    elif whiten_from is not None:
        src_dir = None if index_dir is None else index_dir.parent / f"{index_dir.name}-whiten-{whiten_from.name}"
        src_dir = src_dir or eval_index_dir(whiten_from.name, overrides)
        with Index.open_or_create(src_dir, overrides) as src:
            xw, _ = _database(src, whiten_from.database, [], progress("whitening set"))
        w = wh.fit(xw, dim=config.whitening.dim)
        whitening_source = f"{whiten_from.name} ({len(xw)} database images)"
    if w is not None:
        xb, xq = w.apply(xb), w.apply(xq)
    else:
        xb, xq = l2n(xb), l2n(xq)
    scores = xq @ xb.T  # exact: (n_queries, n_db)
    ranks = np.argsort(-scores, axis=1, kind="stable").T.astype(np.int64)  # (n_db, n_queries)
    metrics = _score(bench, ranks)
    report = {
        **metrics,
        "dataset": bench.name,
        "n_database": len(bench.database),
        "n_distractors": n_distractors,
        "n_queries": len(bench.queries),
        "config": {
            "backbone": config.backbone.name,
            "weights": config.backbone.weights,
            "weights_id": weights_id,
            "dtype": config.backbone.dtype,
            "size": config.image.size,
            "pooling": config.pooling.pooling,
            "gem_p": config.pooling.gem_p,
            "scales": list(config.pooling.scales),
            "query_crop": crop,
            "whitening": whitening_source,
            "whitening_dim": None if w is None else w.dim_out,
            "rerank": None,
            "query_expansion": None,
            "ranking": "exact inner product over all database images",
            "retrieval_version": __version__,
        },
    }
    return EvalResult(metrics, ranks, report)


def _query(idx: Index, image: str, bbox: tuple[float, float, float, float] | None, i: int, n: int,
           progress: Callable[[int, int], None] | None) -> np.ndarray:
    x = idx.embed_query(image, bbox=bbox)
    if progress is not None:
        progress(i + 1, n)
    return x


def _score(bench: Benchmark, ranks: np.ndarray) -> dict[str, dict[str, float]]:
    if bench.protocols == ("all",):
        truth = [QueryTruth(ok=q.easy, junk=q.junk) for q in bench.queries]
        return {"all": compute_map(ranks, truth, KAPPAS).as_dict()}
    easy = [q.easy for q in bench.queries]
    hard = [q.hard for q in bench.queries]
    junk = [q.junk for q in bench.queries]
    return {p: compute_map(ranks, protocol_truth(easy, hard, junk, p), KAPPAS).as_dict() for p in bench.protocols}


def save_ranks(ranks: np.ndarray, out: str | Path) -> Path:
    return atomic_write(out, lambda f: np.save(f, ranks))


def save_report(report: dict[str, Any], out: str | Path) -> Path:
    return atomic_write(out, lambda f: f.write(json.dumps(report, indent=2).encode()))

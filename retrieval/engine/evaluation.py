"""`retrieve eval`: index a benchmark's database, embed its queries, rank them through the same
search `retrieve query` runs (re-ranking, alpha-QE and DBA included), score; or the whole ladder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .. import whitening as wh
from ..ground_truth import Benchmark
from ..config import EngineConfig, SearchOptions, deep_merge, default_index_dir
from ..errors import BadImageError, RetrievalError, UsageError
from ..store import PathFilter
from ..types import shown
from ..metrics import KAPPAS, QueryTruth, compute_map, protocol_truth
from . import derived
from .files import atomic_write
from .index import Index
from .search import Query
from .settings import fingerprint_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """How the database is searched: the options of `retrieve query` (their k unused: every
    database image is ranked) and DBA, an index option."""

    search: SearchOptions = SearchOptions()
    dba: int = 0

    def describe(self) -> str:
        s = self.search
        parts = ([f"DBA {self.dba}"] if self.dba else []) + ([f"aQE {s.qe}"] if s.qe else []) + \
            ([f"re-ranking top {s.rerank_k}"] if s.rerank else [])
        return " + ".join(parts) or "global"

    def to_dict(self) -> dict[str, Any]:
        """The report's form, flat as before SearchOptions (k left out: every image is ranked)."""
        search = {f: v for f, v in dataclasses.asdict(self.search).items() if f != "k"}
        return {**search, "dba": self.dba}


LADDER_QE = 2  # the ladder's alpha-QE and DBA neighbours when --qe / --dba are not given
LADDER_DBA = 2


def ladder(options: EvalOptions) -> list[tuple[str, EvalOptions]]:
    """The stages revisitop-style papers report: global, +DBA, +aQE, +re-ranking, all."""
    qe, dba = options.search.qe or LADDER_QE, options.dba or LADDER_DBA
    plain = SearchOptions(rerank_k=options.search.rerank_k, qe_alpha=options.search.qe_alpha)

    def step(dba: int = 0, **search: Any) -> EvalOptions:
        return EvalOptions(dataclasses.replace(plain, **search), dba=dba)
    return [("global", step()), ("+DBA", step(dba)), ("+aQE", step(qe=qe)),
            ("+re-ranking", step(rerank=True)), ("all", step(dba, rerank=True, qe=qe))]


@dataclass(frozen=True)
class Stage:
    name: str
    options: EvalOptions
    metrics: dict[str, dict[str, float]]  # protocol -> {"mAP", "mP@1", "mP@5", "mP@10"} in [0, 1]
    ms_per_query: float  # search time (the queries are embedded once, for every stage)


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, dict[str, float]]  # the last stage's (the options asked for, or "all" of a ladder)
    ranks: np.ndarray  # (n_db + n_distractors, n_queries), indices into the database list, the last stage's
    report: dict[str, Any]  # metrics + everything needed to reproduce them
    stages: tuple[Stage, ...] = ()


def eval_index_dir(bench: Benchmark, overrides: dict[str, Any], *, distractors: Sequence[str] = ()) -> Path:
    """A cached index per set of images and descriptor setup, beside the default index. The key is
    what the index holds (the database's resolved paths, the distractor folders) and the settings,
    never the set's name: two ground-truth files both called gt.json, or one name under two --data
    folders, each get their own index."""
    cfg = EngineConfig.from_dict(deep_merge(EngineConfig().to_dict(), overrides))
    key = json.dumps({**fingerprint_fields(cfg), "weights": cfg.backbone.weights, "database": list(bench.database),
                      "distractors": sorted(distractors)}, sort_keys=True)
    return default_index_dir().parent / "eval" / f"{bench.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _database(idx: Index, files: Sequence[str], distractors: Sequence[str],
              on_progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Raw descriptors in database order (then distractors), the store id of each row of them,
    and the number of distractors. An index that already holds other images is refused before
    anything is added to it: they would be ranked among the benchmark's."""
    in_db, under = set(files), PathFilter(distractors)
    foreign = [r.path for r in idx.store.rows() if r.status == "ok" and r.path not in in_db and r.path not in under]
    if foreign:
        raise RetrievalError(f"the index {shown(str(idx.path))} holds {len(foreign)} images that are not in this "
                             f"benchmark's database or distractors, e.g. {shown(foreign[0])}; fix: give --index a new "
                             f"folder, or leave --index out (eval keeps a cached index per set)")
    idx.update(list(files) + list(distractors), on_progress=on_progress)
    ids, x = idx.store.descriptors()
    paths = idx.store.paths(ids)
    row_of = {paths[int(i)]: r for r, i in enumerate(ids)}
    missing = [f for f in files if f not in row_of]
    if missing:
        raise RetrievalError(f"{len(missing)} database images could not be indexed, e.g. {missing[0]}; "
                             f"see `retrieve info --index {idx.path}`")
    extra = sorted(p for p in row_of if p not in in_db and p in under)
    order = [row_of[f] for f in files] + [row_of[p] for p in extra]
    return x[order], ids[order], len(extra)


def evaluate(
    bench: Benchmark,
    *,
    overrides: dict[str, Any],
    index_dir: Path | None = None,
    whiten_from: Benchmark | None = None,
    whiten_self: bool = False,
    distractors: Sequence[str | Path] = (),
    crop: bool = True,
    options: EvalOptions = EvalOptions(),
    stages: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EvalResult:
    """Run the protocol, ranking every query through the index's own search (what `retrieve query`
    runs: `Index.search_embedded`) with `options`, or with `stages` the whole ladder (the
    embeddings computed once). Whitening is never learned on the test set unless `whiten_self`;
    the chosen whitening is put in force in the evaluation index, so `retrieve query --index` on
    it searches exactly as the evaluation did."""
    if whiten_self and whiten_from is not None:
        raise UsageError("choose one whitening source: another benchmark or (explicitly) the test set itself")
    runs = ladder(options) if stages else [(options.describe(), options)]
    # eval whitens explicitly (below); the index keeps the last stage's DBA, so that `retrieve query`
    # on it afterwards searches as the evaluation's final ranking did
    overrides = deep_merge(overrides, {"whitening": {"enabled": False}, "index": {"dba": runs[-1][1].dba}})

    def progress(stage: str) -> Callable[[int, int], None] | None:
        return None if on_progress is None else (lambda done, total: on_progress(stage, done, total))

    extra = [str(Path(d).resolve()) for d in distractors]
    where = index_dir or eval_index_dir(bench, overrides, distractors=extra)
    w, whitening_source = (None, "none (L2 only)") if whiten_from is None else _whitening_from(
        whiten_from, overrides, index_dir, progress("whitening set"))
    with Index.open_or_create(where, overrides) as idx:
        xb, ids, n_distractors = _database(idx, bench.database, extra, progress("database"))
        if whiten_self:
            w = wh.fit(xb[: len(bench.database)], dim=idx.config.whitening.dim)
            whitening_source = f"{bench.name} (the test set itself, chosen explicitly)"
        derived.set_whitening(idx.store, idx.config, w, whitening_source)
        position = {int(i): r for r, i in enumerate(ids)}
        queries = _embed_queries(idx, bench, progress("queries"))
        done: list[Stage] = []
        ranks = np.zeros((0, 0), np.int64)
        for name, opts in runs:
            ranks, seconds = _rank(idx, queries, position, opts)
            done.append(Stage(name, opts, _score(bench, ranks), 1000 * seconds / max(len(queries), 1)))
        weights_id = idx.store.get_meta("weights_id")
        config = idx.config
    last = done[-1]
    report = _report(bench, config, weights_id, last, n_distractors=n_distractors, crop=crop,
                     whitening=whitening_source, whitening_dim=None if w is None else w.dim_out)
    if stages:
        report["ladder"] = [{"stage": s.name, **s.metrics, "ms_per_query": s.ms_per_query,
                             "options": s.options.to_dict()} for s in done]
    return EvalResult(last.metrics, ranks, report, tuple(done))


def _whitening_from(bench: Benchmark, overrides: dict[str, Any], index_dir: Path | None,
                    progress: Callable[[int, int], None] | None) -> tuple[wh.Whitening, str]:
    """The whitening learned on another benchmark's database (its own cached index), and its name."""
    src_dir = eval_index_dir(bench, overrides)
    if index_dir is not None:  # beside the given index, keyed as the cache is
        src_dir = index_dir.parent / f"{index_dir.name}-whiten-{src_dir.name}"
    with Index.open_or_create(src_dir, overrides) as src:
        xw, _, _ = _database(src, bench.database, [], progress)
    return wh.fit(xw, dim=src.config.whitening.dim), f"{bench.name} ({len(xw)} database images)"


def _report(bench: Benchmark, config: EngineConfig, weights_id: Any, last: Stage, *, n_distractors: int,
            crop: bool, whitening: str, whitening_dim: int | None) -> dict[str, Any]:
    """The JSON report of the final stage: its metrics, the sets' sizes and what produced them."""
    search = last.options.search
    return {
        **last.metrics,
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
            "whitening": whitening,
            "whitening_dim": whitening_dim,
            "rerank": {"top": search.rerank_k} if search.rerank else None,
            "query_expansion": {"k": search.qe, "alpha": search.qe_alpha} if search.qe else None,
            "dba": last.options.dba or None,
            "ranking": "retrieve query's search over every database image (Index.search_embedded, exact inner "
                       "product; re-ranked within the shortlist, global order beyond it)",
            "retrieval_version": __version__,
        },
    }


def _embed_queries(idx: Index, bench: Benchmark, progress: Callable[[int, int], None] | None) -> list[Query]:
    """Each query embedded by the index's own pipeline, cropped to its box when it has one."""
    out: list[Query] = []
    for i, q in enumerate(bench.queries):
        try:
            out.extend(idx.queries([q.image], bbox=q.bbox))
        except BadImageError as e:
            if q.bbox is None or "box" not in e.reason:
                raise
            raise BadImageError(e.path, e.reason, fix=f"correct query {i}'s box in the {bench.name} ground truth "
                                                      f"(or evaluate with --no-crop)") from None
        if progress is not None:
            progress(i + 1, len(bench.queries))
    return out


def _rank(idx: Index, queries: Sequence[Query], position: dict[int, int], opts: EvalOptions) -> tuple[np.ndarray, float]:
    """(n_db_total, n_queries) ranking of every database image for each query, searched with
    `opts` exactly as `retrieve query` searches, and the seconds the searches took."""
    idx.config = dataclasses.replace(idx.config, index=dataclasses.replace(idx.config.index, dba=opts.dba))
    n = len(position)
    idx.ensure_vectors()  # built (DBA is a property of the database vectors) before the clock starts
    columns, seconds = [], 0.0
    every = dataclasses.replace(opts.search, k=n)
    for q in queries:
        t0 = time.perf_counter()
        hits = idx.search_embedded(q, every).hits
        seconds += time.perf_counter() - t0
        if len(hits) != n:
            raise RetrievalError(f"the search returned {len(hits)} of {n} database images (files gone since "
                                 f"indexing?); index the benchmark again")
        columns.append([position[h.id] for h in hits])
    return np.array(columns, np.int64).T.reshape(n, len(queries)), seconds


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

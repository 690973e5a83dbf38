"""Searching an index with embedded queries: global similarity, optional alpha-query expansion,
optional re-ranking by verified patch matches, and results whose files are gone left out.
numpy and FAISS; queries arrive embedded (engine/embedding.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import rerank as rr
from .. import whitening as wh
from ..config import SearchOptions
from ..local import LocalFeatures
from ..store import Store
from ..vectors import VectorIndex
from .reranking import Reranking

if TYPE_CHECKING:
    from .embedding import Embedding

# Results whose files are gone are replaced from further down the ranking: each round asks for
# GONE_GROWTH times as many, at most GONE_ROUNDS rounds (k 4^7 results in the last: 163,840 for k = 10)
GONE_GROWTH, GONE_ROUNDS = 4, 8


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    score: float  # global similarity (cosine of the indexed vectors)
    path: str
    id: int
    inliers: int | None = None  # geometrically verified patch matches, when re-ranked


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits: ids unique, ranks 1..n, ordered by decreasing score, or when re-ranked by
    rerank.order_key (verified inliers, then score). gone: paths of results left out because
    they are no longer regular files (deleted, moved, on a drive not mounted, replaced by a
    folder; `retrieve index` of their folder prunes them). looked_at: set when fewer than k hits
    were found among the best `looked_at` results and the rest were not looked at (GONE_ROUNDS)."""

    hits: tuple[Hit, ...]
    reranked: bool = False
    gone: tuple[str, ...] = ()
    looked_at: int | None = None

    def __post_init__(self) -> None:
        keys = [rr.order_key(h.score, h.inliers if self.reranked else None) for h in self.hits]
        if any(a[0] < b[0] or (a[0] == b[0] and a[1] < b[1] - 1e-6) for a, b in zip(keys, keys[1:])):
            raise ValueError("hits are not in ranking order")
        if len({h.id for h in self.hits}) != len(self.hits):
            raise ValueError("hit ids must be unique")
        if [h.rank for h in self.hits] != list(range(1, len(self.hits) + 1)):
            raise ValueError("ranks must be 1..n")

    def to_json(self) -> list[dict[str, Any]]:
        """The hits as `retrieve query --json` prints them and POST /api/search answers them:
        {"rank", "score", "path", "id", "inliers" (only when re-ranked)}."""
        return [{"rank": h.rank, "score": h.score, "path": h.path, "id": h.id,
                 **({"inliers": h.inliers} if h.inliers is not None else {})} for h in self.hits]


@dataclass(frozen=True)
class Query:
    """One embedded query: raw descriptor (1, D), first-scale patch tokens (h*w, d) and grid.
    An indexed file as the query ("more like this", engine/lookup.py): `indexed_id` is left out of
    its own results, and `features`, its stored local descriptors (already projected by the index's
    patch PCA), re-rank in place of the patch tokens (then (0, d))."""

    raw: np.ndarray
    patches: np.ndarray
    grid: tuple[int, int]
    features: LocalFeatures | None = None
    indexed_id: int | None = None
    original_wh: tuple[int, int] | None = None  # a file's query: the whole picture's upright (width, height)

    @classmethod
    def of(cls, e: Embedding) -> Query:
        """The query a file embedded with its patch tokens makes (the one place a Query is built)."""
        return cls(e.descriptor[None], e.tokens(), e.grid, original_wh=e.decoded.original_wh)


def search(q: Query, *, store: Store, vec: VectorIndex, whitening: wh.Whitening | None, options: SearchOptions,
           rerank: Reranking | None = None) -> SearchResult:
    """The top options.k (see Index.search): `store` gives the results' paths, `rerank` re-ranks
    them when options.rerank asks (engine/reranking.py; not needed otherwise)."""
    k = options.k
    xq = whitening.apply(q.raw) if whitening is not None else q.raw
    if options.qe > 0:
        scores, ids = vec.search(xq, options.qe)
        top = ids[0][ids[0] >= 0]
        xq = rr.query_expansion(xq[0], vectors_of(vec, top), scores[0][: len(top)], alpha=options.qe_alpha)[None]
    want, total = k, vec.ntotal
    where: dict[int, str] = {}
    usable: dict[int, bool] = {}  # each id's file looked at once per query
    for round_ in range(GONE_ROUNDS):  # the list is refilled from further down while results are gone
        if round_:  # geometric: files gone by thousands (a drive not mounted) cost a few rounds, not n / k
            want = min(total, want * GONE_GROWTH)
        ranked = _ranked(xq, q, vec=vec, rerank=rerank, k=want, options=options)
        new = [i for _, i, _ in ranked if i not in usable]
        where.update(store.paths(new))  # the store asks SQLite in parts
        usable.update((i, os.path.isfile(where[i])) for i in new)
        present = [h for h in ranked if usable[h[1]]]
        if len(present) >= k or len(ranked) < want or want >= total:
            break
    last = ranked.index(present[k - 1]) + 1 if len(present) >= k else len(ranked)
    gone = tuple(where[i] for _, i, _ in ranked[:last] if not usable[i])  # those above the last hit
    hits = tuple(Hit(rank=r + 1, score=s, path=where[i], id=i, inliers=n) for r, (s, i, n) in enumerate(present[:k]))
    more = len(present) < k and len(ranked) == want < total  # rounds ran out with results left unlooked-at
    return SearchResult(hits, reranked=options.rerank, gone=gone, looked_at=len(ranked) if more else None)


def _ranked(xq: np.ndarray, q: Query, *, vec: VectorIndex, rerank: Reranking | None, k: int, options: SearchOptions
            ) -> list[tuple[float, int, int | None]]:
    """(score, id, inliers) of the top k, re-ranked over the top options.rerank_k when asked."""
    shortlist = max(k, options.rerank_k) if options.rerank else k
    itself = q.indexed_id is not None  # an indexed query: one more asked for, itself left out
    scores, ids = vec.search(xq, shortlist + itself)
    valid = (ids[0] >= 0) & (ids[0] != (q.indexed_id if itself else -1))
    ids_v, scores_v = ids[0][valid][:shortlist], scores[0][valid][:shortlist]
    inliers: list[int | None] = [None] * len(ids_v)
    if options.rerank and len(ids_v):
        if rerank is None:
            raise ValueError("options.rerank needs the re-ranking stage (engine.reranking.Reranking)")
        ids_v, scores_v, inliers = rerank.rerank(q.patches, q.grid, ids_v, scores_v, top=options.rerank_k,
                                                 features=q.features)
    return [(float(s), int(i), n) for s, i, n in zip(scores_v[:k], ids_v[:k], inliers[:k])]


def vectors_of(vec: VectorIndex, ids: np.ndarray) -> np.ndarray:
    """Database vectors (as indexed: whitened, augmented) of the given ids, from the FAISS index
    (ivfpq: from its memory-mapped exact file)."""
    return vec.vectors_of(np.asarray(ids, np.int64))

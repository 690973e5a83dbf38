"""Re-ranking a shortlist by geometrically verified patch matches: the stage a search runs after
its global ranking when asked (`--rerank`). numpy; no model of its own.

It is given the store (the candidates' stored local descriptors, the index's patch PCA) and a
function that makes local descriptors from files, for rows stored without them (an index too
small to learn its patch PCA when they were committed): `Index` passes its own model's, loaded
only if such a candidate comes up. Nothing here calls back into `Index`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import local
from .. import rerank as rr
from ..config import EngineConfig
from ..local import LocalFeatures, LocalPCA
from ..store import Store
from .commit import query_pca

if TYPE_CHECKING:
    from ..backbone import Backbone

# local_of(paths, pca): local descriptors of files by path (those that cannot be read left out)
LocalOf = Callable[[Sequence[str], LocalPCA], dict[str, LocalFeatures]]


@dataclass(frozen=True)
class Reranking:
    """The re-ranking stage over `store`; `local_of` makes the local descriptors of candidates
    stored without them."""

    store: Store
    local_of: LocalOf

    def rerank(self, patches: np.ndarray, grid: tuple[int, int], ids: np.ndarray, scores: np.ndarray, *,
               top: int, features: LocalFeatures | None = None) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
        """(ids, scores, inliers) of a ranking, its first `top` verified against the query's patch
        tokens (h*w, d) on its grid (h, w) and put in rerank.rerank_order; the rest keep their
        order, with inliers None. features: the query's local descriptors already projected by the
        index's patch PCA (an indexed file's stored ones), used in place of the tokens (then (0, d))."""
        pca = query_pca(self.store, patches)
        if features is not None:
            qf, qxy = features.feats.astype(np.float32), features.xy
        else:
            qf, qxy = pca.project(patches), local.grid_xy(grid)
        head = min(top, len(ids))
        cands = self.candidates([int(i) for i in ids[:head]], pca)
        counts = []
        for i in ids[:head]:
            c = cands.get(int(i))
            counts.append(0 if c is None else rr.verify(qf, qxy, c.feats.astype(np.float32), c.xy).n_inliers)
        order = np.concatenate([rr.rerank_order(scores[:head].tolist(), counts), np.arange(head, len(ids))])
        return ids[order], scores[order], [counts[j] if j < head else None for j in order]

    def candidates(self, ids: Sequence[int], pca: LocalPCA) -> dict[int, LocalFeatures]:
        """Stored local descriptors of the candidates; made from the files where missing."""
        out, missing = stored_local(self.store, ids, pca)
        if missing:
            paths = self.store.paths(missing)
            made = self.local_of([paths[i] for i in missing], pca)
            out.update((i, made[p]) for i, p in paths.items() if p in made)
        return out


def stored_local(store: Store, ids: Sequence[int], pca: LocalPCA) -> tuple[dict[int, LocalFeatures], list[int]]:
    """Stored local descriptors of `ids`, and the ids that have none (rows from before the patch
    PCA existed: the caller makes those from the files)."""
    stored = store.local(ids)
    out = {i: local.unpack(blob[0], blob[1], blob[2], pca.dim) for i, blob in stored.items() if blob is not None}
    return out, [i for i in ids if stored.get(i) is None]


def made_local(paths: Sequence[str], pca: LocalPCA, *, backbone: Backbone, config: EngineConfig
               ) -> dict[str, LocalFeatures]:
    """Local descriptors of files made by `backbone` as the index makes them, by path (files that
    cannot be read left out): the `local_of` an index gives its re-ranking stage."""
    from .embedding import Embedding, embed_files

    out: dict[str, LocalFeatures] = {}
    for group in embed_files(paths, backbone=backbone, config=config, workers=0, pca=pca):
        for item in group:
            if isinstance(item, Embedding) and item.features is not None:
                out[item.decoded.path] = item.features
    return out


__all__ = ["LocalOf", "Reranking", "made_local", "stored_local"]

"""A temporary index for the k-nearest-neighbour graph of an index's own vectors (`retrieve dedupe`).

Asking the query index for every vector's neighbours costs n x n dot products on an exact index
and n x sqrt(n) on this package's IVF (64 of 4 sqrt(n) lists). `graph_index` instead copies the
vectors, `chunk` at a time, into an IVF whose lists hold about `list_size` vectors each (nlist
grows with n) and searches `nprobe` of them: each image's search scans about nprobe x list_size
vectors whatever n is, so the graph's time grows about linearly (docs/dedupe.md, "How it scales").
The coarse quantizer adds nlist x d per query: flat (one matrix product) up to
`flat_quantizer_max` lists, an HNSW graph of the centroids above. The copy costs n x (4 d + 8)
bytes (3.1 GB per million 768-d vectors) while the graph is made; the caller drops it after.
Deterministic: the k-means sample is seeded, FAISS's k-means has its own fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .building import TRAIN_PER_LIST
from .vector_index import VectorIndex, _as_vectors

GRAPH_MIN = 10_000  # below, the index's own search (exact at 10k took 6.8 s, this graph 4.0: docs/dedupe.md)
LIST_SIZE = 1000  # vectors per inverted list (nlist = n / LIST_SIZE)
NPROBE = 4  # lists scanned per query: nprobe x list_size vectors, whatever n is
FLAT_QUANTIZER_MAX = 4096  # lists; an HNSW quantizer above (nlist x d per query would outgrow the scan)
TRAIN_MAX = 262_144  # k-means sample cap (the training cost stays linear in nlist)
CHUNK = 65_536  # vectors read from the query index and added at a time


@dataclass(frozen=True)
class GraphIndex:
    """The graph's IVF over a VectorIndex's vectors (external ids); `search` as VectorIndex's:
    (scores, ids), each (m, min(k, n)), a slot the probed lists could not fill holds id -1."""

    faiss_index: Any
    dim: int
    nlist: int
    nprobe: int

    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.faiss_index.search(_as_vectors(xq, self.dim, "query"), min(k, self.ntotal))
        return scores.astype(np.float32), ids.astype(np.int64)

    def nbytes(self) -> int:
        """Bytes of the copy: each vector and its int64 id, plus the centroids."""
        return self.ntotal * (4 * self.dim + 8) + self.nlist * self.dim * 4


def graph_index(vec: VectorIndex, *, list_size: int = LIST_SIZE, nprobe: int = NPROBE,
                flat_quantizer_max: int = FLAT_QUANTIZER_MAX, chunk: int = CHUNK) -> GraphIndex:
    """An IVF over `vec`'s vectors for their kNN graph: n / list_size lists, k-means on a seeded
    sample of at most TRAIN_MAX of them, `nprobe` lists searched; the vectors are read from `vec`
    `chunk` at a time (never one more n x d array)."""
    import faiss

    if list_size < 1 or nprobe < 1 or chunk < 1:
        raise ValueError(f"list_size, nprobe and chunk must be >= 1, got {list_size}, {nprobe}, {chunk}")
    ids = vec.ids()
    n, d = len(ids), vec.dim
    nlist = max(1, round(n / list_size))
    quantizer = "" if nlist <= flat_quantizer_max else "_HNSW32"
    index: Any = faiss.index_factory(d, f"IVF{nlist}{quantizer},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf: Any = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10  # the lists need only be balanced, not optimal
    ivf.cp.min_points_per_centroid = 1  # a small sample: no FAISS warning
    if n:
        t = min(n, TRAIN_PER_LIST * nlist, TRAIN_MAX)
        rows = np.sort(np.random.default_rng(0).choice(n, t, replace=False))
        index.train(vec.vectors_of(ids[rows]))
    for start in range(0, n, chunk):
        index.add_with_ids(vec.vectors_of(ids[start:start + chunk]), ids[start:start + chunk])
    ivf.nprobe = min(nprobe, nlist)
    if quantizer:
        hnsw: Any = faiss.downcast_index(ivf.quantizer)
        hnsw.hnsw.efSearch = max(64, 4 * nprobe)
    return GraphIndex(index, d, nlist, ivf.nprobe)

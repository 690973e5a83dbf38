"""Building a VectorIndex: the kind chosen by size, the training sample, one-shot `build` and
`build_chunked` (any kind from a sample plus (ids, vectors) chunks), the ivfpq index and its exact file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import INDEX_KINDS
from .exact_file import EXACT_HEADER, _BlockCRC, _exact_header, attach_exact
from .vector_index import VectorIndex, _as_vectors

AUTO_EXACT_MAX = 1_000_000  # exact search up to this many vectors (scripts/bench_query.py, docs/throughput.md)
# ivfpq (docs/index.md; chosen by scripts/bench_query.py --ivfpq-sweep, whose recall and latency
# at each setting are in docs/throughput.md, "Compressed index", and the reasons in docs/decisions.md)
PQ_DIMS, PQ_BYTES_MAX = 4, 256  # PQ: one 8-bit code per 4 dimensions (768-d: 192 bytes), at most 256 bytes
IVFPQ_NPROBE = 1024  # ivfpq search: nprobe 1024 of ~2 sqrt(n) lists
NLIST_MAX = 65_536
TRAIN_PER_LIST = 39  # k-means training sample per inverted list (FAISS's own minimum)


def choose_kind(kind: str, n: int) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        return "flat" if n <= AUTO_EXACT_MAX else "ivfpq"
    return kind


def _nlist(kind: str, n: int) -> int:
    if kind == "ivf":
        return max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39 if n >= 39 else 1))
    # ivfpq: about 2 sqrt(n) lists (2M vectors: 2,828; k-means over 4 sqrt(n) lists took too long to
    # train on 2 cores), capped (1B vectors: 63,245 lists of ~16k), at least TRAIN_PER_LIST training points each
    return max(1, min(int(2 * np.sqrt(max(n, 1))), NLIST_MAX, max(n // TRAIN_PER_LIST, 1)))


def train_size(kind: str, n: int) -> int:
    """How many of n vectors `build_chunked` wants as its training sample (0: none)."""
    chosen = choose_kind(kind, n)
    if chosen == "ivf":  # k-means on a sample: 100 points per list is plenty and bounds the training cost
        return min(n, 100 * _nlist("ivf", n))
    if chosen == "ivfpq":  # the lists' k-means and the PQ codebooks (>= 256 x 39 points for 8-bit codes)
        return min(n, max(TRAIN_PER_LIST * _nlist("ivfpq", n), 256 * TRAIN_PER_LIST))
    return 0


def train_rows(kind: str, n: int) -> np.ndarray:
    """Which rows (positions 0..n-1 in the order the vectors are added) form the training sample, in
    training order; seeded, so a chunked build that trains on these rows equals a one-shot `build`."""
    t = train_size(kind, n)
    if t >= n:
        return np.arange(n)
    return np.random.default_rng(0).choice(n, t, replace=False)


def build(xb: np.ndarray, ids: np.ndarray, *, kind: str = "auto", fingerprint: str, data_version: int,
          exact_path: str | Path | None = None) -> VectorIndex:
    """Inner-product index over xb (n, d) with external int64 ids, in host memory (see `place`).
    ivfpq writes the exact vectors to `exact_path` (required for that kind)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if xb.ndim != 2:
        raise ValueError(f"database vectors must be (n, d), got shape {xb.shape}")
    d = int(xb.shape[1])
    xb = _as_vectors(xb, d, "database")
    if len(ids) != len(xb):
        raise ValueError(f"{len(xb)} vectors but {len(ids)} ids")
    n = len(xb)
    return build_chunked(xb[train_rows(kind, n)], [(ids, xb)], n=n, dim=d, kind=kind, fingerprint=fingerprint,
                         data_version=data_version, exact_path=exact_path)


def build_chunked(sample: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, n: int, dim: int,
                  kind: str = "auto", fingerprint: str, data_version: int,
                  exact_path: str | Path | None = None) -> VectorIndex:
    """The index over n vectors arriving as (ids (c,), xb (c, dim)) chunks, trained on `sample`
    (s, dim) (rows `train_rows(kind, n)` of the data, for a result equal to `build`'s). Holds one
    chunk at a time besides the index; ivfpq streams the chunks into `exact_path` (written to a
    temporary file beside it, then moved over it)."""
    import faiss

    chosen = choose_kind(kind, n)
    inner: Any
    if chosen == "ivfpq":
        if exact_path is None:
            raise ValueError("an ivfpq index needs exact_path, the file that holds its exact vectors")
        return _build_ivfpq(sample, chunks, n=n, dim=dim, fingerprint=fingerprint, data_version=data_version,
                            exact_path=Path(exact_path))
    if chosen == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif chosen == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        inner.hnsw.efSearch = 512  # raised from 128 for recall (scripts/bench_query.py: docs/throughput.md, "Query")
    else:  # ivf
        nlist = _nlist("ivf", n)
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if n:
            inner.train(_as_vectors(sample, dim, "training"))
        inner.nprobe = min(nlist, 64)  # raised from 16 for recall (scripts/bench_query.py: docs/throughput.md, "Query")
    index = faiss.IndexIDMap2(inner)
    added = 0
    for chunk_ids, xb in chunks:
        chunk_ids, xb = _chunk(chunk_ids, xb, dim)
        if len(xb):
            index.add_with_ids(xb, chunk_ids)
        added += len(xb)
    _check_added(added, n, faiss.vector_to_array(index.id_map))
    if chosen == "ivf":
        inner.make_direct_map()  # so vectors can be read back by id (query expansion)
    return VectorIndex(index, chosen, dim, fingerprint, data_version)


def _chunk(ids: np.ndarray, xb: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    xb = _as_vectors(xb, dim, "database")
    if len(ids) != len(xb):
        raise ValueError(f"{len(xb)} vectors but {len(ids)} ids")
    return ids, xb


def _check_added(added: int, n: int, ids: np.ndarray) -> None:
    if added != n:
        raise ValueError(f"the chunks held {added} vectors, {n} were announced")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")


def _build_ivfpq(sample: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, n: int, dim: int,
                 fingerprint: str, data_version: int, exact_path: Path) -> VectorIndex:
    index = _ivfpq_index(dim, n, _as_vectors(sample, dim, "training") if n else np.zeros((0, dim), np.float32))
    token = secrets.token_hex(8)
    meta = {"fingerprint": fingerprint, "generation": data_version, "token": token, "ntotal": n, "dim": dim}
    row_ids = np.zeros(n, np.int64)  # 8 bytes a vector: the one array besides the codes
    tmp = exact_path.with_name(f".{exact_path.name}.{token}.tmp")
    added = 0
    crc = _BlockCRC()
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * EXACT_HEADER)
            for chunk_ids, xb in chunks:
                chunk_ids, xb = _chunk(chunk_ids, xb, dim)
                if added + len(xb) > n:
                    raise ValueError(f"the chunks hold more than the {n} vectors announced")
                if len(xb):
                    index.add_with_ids(xb, np.arange(added, added + len(xb), dtype=np.int64))
                    f.write(xb.tobytes())
                    crc.update(xb.data.cast("B"))
                row_ids[added: added + len(xb)] = chunk_ids
                added += len(xb)
            _check_added(added, n, row_ids)
            f.seek(0)
            f.write(_exact_header(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, exact_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    out = VectorIndex(index, "ivfpq", dim, fingerprint, data_version, row_ids=row_ids, token=token,
                      exact_crc=crc.blocks())
    return attach_exact(out, exact_path, verify=False)  # just written: its checksums were taken from memory


def _ivfpq_index(d: int, n: int, sample: np.ndarray) -> Any:
    """IVF (inner product) over PQ codes of `pq_bytes(d)` 8-bit sub-quantisers (fewer bits when
    the sample is small), trained on `sample` (k-means of the lists: 10 iterations).
    No OPQ rotation: training it took 28 minutes at 200k 768-d vectors on 2 cores (docs/decisions.md)."""
    import faiss

    m = pq_bytes(d)
    nlist = _nlist("ivfpq", n)
    nbits = 8 if len(sample) >= 256 * TRAIN_PER_LIST else max(1, min(8, int(np.log2(max(len(sample) // 39, 2)))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1  # small sets: no FAISS warning
    if len(sample):
        index.train(sample)
    index.nprobe = min(nlist, IVFPQ_NPROBE)
    return index


def pq_bytes(d: int) -> int:
    """Sub-quantisers (bytes of code) for d dimensions: the largest count <= min(d / PQ_DIMS,
    PQ_BYTES_MAX) that divides d (ViT-S 96, ViT-B 192, ViT-L and ViT-g 256: 1/16 of the float32
    vector or less)."""
    return max(m for m in range(1, max(min(PQ_BYTES_MAX, d // PQ_DIMS), 1) + 1) if d % m == 0)

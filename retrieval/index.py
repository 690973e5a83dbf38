"""FAISS inner-product index over L2-normalised vectors: build, search, save, load.

Always derived from the store; it carries the fingerprint and store generation it was built
from, and `from_bytes` refuses data whose fingerprint or generation does not match (the caller
then rebuilds it). The engine opens the files; this module reads and writes their contents. Arrays: xb (n, d) / xq (m, d) float32 C-contiguous, ids int64; search
returns (scores, ids), each (m, k), best first, id -1 where fewer than k exist.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .errors import ArtifactMismatchError

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_EXACT_MAX = 1_000_000  # exact search up to this many vectors (scripts/bench_query.py, docs/throughput.md)


@dataclass
class VectorIndex:
    faiss_index: Any
    kind: str
    dim: int
    fingerprint: str
    generation: int

    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = _as_vectors(xq, self.dim, "query")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k_eff = min(k, max(self.ntotal, 1))
        scores, ids = self.faiss_index.search(xq, k_eff)
        if k_eff < k:
            pad = ((0, 0), (0, k - k_eff))
            scores = np.pad(scores, pad, constant_values=-np.inf)
            ids = np.pad(ids, pad, constant_values=-1)
        return scores.astype(np.float32), ids.astype(np.int64)


def _as_vectors(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} vectors must be (n, {dim}), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def choose_kind(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "auto":
        return "flat" if n <= AUTO_EXACT_MAX else "ivf"
    return kind


def build(xb: np.ndarray, ids: np.ndarray, *, kind: str = "auto", fingerprint: str, generation: int,
          use_gpu: bool | None = None) -> VectorIndex:
    """Inner-product index over xb (n, d) with external int64 ids."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if xb.ndim != 2:
        raise ValueError(f"database vectors must be (n, d), got shape {xb.shape}")
    d = int(xb.shape[1])
    xb = _as_vectors(xb, d, "database")
    if len(ids) != len(xb):
        raise ValueError(f"{len(xb)} vectors but {len(ids)} ids")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    n = len(xb)
    chosen = choose_kind(kind, n)
    inner: Any
    if chosen == "flat":
        inner = faiss.IndexFlatIP(d)
    elif chosen == "hnsw":
        inner = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        inner.hnsw.efSearch = 512  # recall@10 0.46 at 128, 0.84 at 512 (scripts/bench_query.py, 100k)
    else:  # ivf
        nlist = max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39 if n >= 39 else 1))
        quantizer = faiss.IndexFlatIP(d)
        inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        if n:  # k-means on a sample: 100 points per list is plenty and bounds the training cost
            sample = xb if n <= 100 * nlist else xb[np.random.default_rng(0).choice(n, 100 * nlist, replace=False)]
            inner.train(sample)
        inner.nprobe = min(nlist, 64)  # recall@10 0.86 at 16, 0.985 at 64 (scripts/bench_query.py, 100k)
    index = faiss.IndexIDMap2(inner)
    if n:
        index.add_with_ids(xb, ids)
    if chosen == "ivf":
        inner.make_direct_map()  # so vectors can be read back by id (query expansion)
    if chosen == "flat" and _want_gpu(use_gpu):
        index = _to_gpu(index)
    return VectorIndex(index, chosen, d, fingerprint, generation)


def _want_gpu(use_gpu: bool | None) -> bool:
    import faiss

    has = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not has:
        log.warning("faiss has no GPU support here; searching on the CPU")
    return has if use_gpu is None else bool(use_gpu and has)


def _to_gpu(index: Any) -> Any:  # pragma: no cover - needs a CUDA build of faiss
    import faiss

    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, index)
    gpu.referenced_resources = res  # type: ignore[attr-defined]
    return gpu


def to_bytes(index: VectorIndex) -> bytes:
    """The FAISS index plus its kind, fingerprint and generation, as one blob (write it atomically)."""
    import faiss

    cpu = index.faiss_index
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(cpu).__name__:  # pragma: no cover
        cpu = faiss.index_gpu_to_cpu(cpu)
    meta = json.dumps({"kind": index.kind, "dim": index.dim, "fingerprint": index.fingerprint,
                       "generation": index.generation, "ntotal": index.ntotal})
    buf = io.BytesIO()
    np.savez(buf, faiss=faiss.serialize_index(cpu), meta=np.array(meta))
    return buf.getvalue()


def header(f: BinaryIO, *, fingerprint: str, generation: int, source: str = "vector index") -> dict[str, Any]:
    """Kind, dim, size of a saved index, reading only its small header member (not the vectors);
    ArtifactMismatchError if unreadable, stale or from another configuration."""
    try:
        with np.load(f) as z:
            meta: dict[str, Any] = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactMismatchError(f"{source} is unreadable ({e})") from e
    if meta["fingerprint"] != fingerprint:
        raise ArtifactMismatchError(f"{source} was built with another configuration")
    if meta["generation"] != generation:
        raise ArtifactMismatchError(
            f"{source} reflects store generation {meta['generation']}, the store is at {generation}"
        )
    return meta


def from_file(f: BinaryIO, *, fingerprint: str, generation: int, use_gpu: bool | None = None,
              source: str = "vector index") -> VectorIndex:
    """Inverse of to_bytes over a seekable file; the header is checked before the vectors are read."""
    import faiss

    meta = header(f, fingerprint=fingerprint, generation=generation, source=source)
    f.seek(0)
    try:
        with np.load(f) as z:
            raw = z["faiss"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactMismatchError(f"{source} is unreadable ({e})") from e
    index = faiss.deserialize_index(raw)
    if index.ntotal != meta["ntotal"] or index.d != meta["dim"]:
        raise ArtifactMismatchError(f"{source} is damaged (size does not match its header)")
    if meta["kind"] == "flat" and _want_gpu(use_gpu):
        index = _to_gpu(index)
    return VectorIndex(index, meta["kind"], int(meta["dim"]), fingerprint, int(meta["generation"]))


def from_bytes(data: bytes, *, fingerprint: str, generation: int, use_gpu: bool | None = None,
               source: str = "vector index") -> VectorIndex:
    """Inverse of to_bytes; ArtifactMismatchError if unreadable, stale or from another configuration."""
    return from_file(io.BytesIO(data), fingerprint=fingerprint, generation=generation, use_gpu=use_gpu, source=source)

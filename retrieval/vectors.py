"""FAISS inner-product index over L2-normalised vectors: build, search, save, load.

Always derived from the store; it carries the fingerprint and store generation it was built
from, and `from_bytes` refuses data whose fingerprint or generation does not match (the caller
then rebuilds it). The engine opens the files; this module reads and writes their contents.
Arrays: xb (n, d) / xq (m, d) float32 C-contiguous, ids int64; search returns (scores, ids), each
(m, min(k, n)), best first: `k` is clamped to what exists, never used to size an allocation (a
user's `-k 1000000000` must not exhaust memory). An approximate index may still find fewer than
that for some query: those slots hold id -1 and score -inf.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .config import INDEX_KINDS
from .errors import ArtifactMismatchError

log = logging.getLogger(__name__)

AUTO_EXACT_MAX = 1_000_000  # exact search up to this many vectors (scripts/bench_query.py, docs/throughput.md)


@dataclass
class VectorIndex:
    """`faiss_index` always lives in host memory (it is what gets saved); `exact_on`, when set,
    is a copy of an exact index's vectors on a GPU that answers the searches."""

    faiss_index: Any
    kind: str
    dim: int
    fingerprint: str
    generation: int
    exact_on: TorchExact | None = None

    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def ids(self) -> np.ndarray:
        """(ntotal,) int64: the external ids, in the order the vectors were added."""
        import faiss

        return faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)

    def on_device(self, device: str) -> VectorIndex:
        """This exact index with its searches run by PyTorch on `device` (used for "cuda"; any
        torch device works, which is how the CPU tests check it against FAISS)."""
        if self.kind != "flat":
            raise ValueError(f"only exact (flat) indexes search on a device, not {self.kind!r}")
        return dataclasses.replace(self, exact_on=TorchExact.of(self.faiss_index, device))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = _as_vectors(xq, self.dim, "query")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.ntotal)
        if k == 0:  # nothing to find
            return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
        searcher = self.exact_on or self.faiss_index
        scores, ids = searcher.search(xq, k)
        return scores.astype(np.float32), ids.astype(np.int64)


@dataclass(frozen=True)
class TorchExact:
    """Exact inner-product search as matrix products on a torch device: the GPU path.

    Chosen over FAISS's GPU builds: the PyPI faiss-gpu-cu12 1.14 wheel has no kernels for
    Hopper GPUs (H100/H200) and aborts the whole process on its first search there
    (docs/throughput.md), while PyTorch is already installed for the model and runs everywhere.
    Scores are fp32 products (TF32 stays off, PyTorch's default), so results equal FAISS's up to
    float rounding and the order of exact ties.
    """

    vectors: Any  # torch.Tensor (n, d) float32
    ids: Any  # torch.Tensor (n,) int64
    max_scores: int = 1 << 28  # scores held at once (1 GB): queries are searched in chunks

    @classmethod
    def of(cls, faiss_index: Any, device: str) -> TorchExact:
        import faiss
        import torch

        n = int(faiss_index.ntotal)
        inner = faiss.downcast_index(faiss_index.index)  # IndexIDMap2 over IndexFlatIP: rows in insertion order
        ids = faiss.vector_to_array(faiss_index.id_map)
        xb = inner.reconstruct_n(0, n) if n else np.zeros((0, faiss_index.d), np.float32)
        return cls(torch.from_numpy(np.ascontiguousarray(xb, np.float32)).to(device),
                   torch.from_numpy(np.ascontiguousarray(ids, np.int64)).to(device))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q = torch.from_numpy(xq).to(self.vectors.device)
        step = max(1, self.max_scores // max(len(self.vectors), 1))
        scores, ids = [], []
        for start in range(0, len(q), step):
            scores_ = torch.nan_to_num(q[start:start + step] @ self.vectors.T, nan=-torch.inf)  # NaN last, as FAISS
            s, j = torch.topk(scores_, k, dim=1)
            scores.append(s)
            ids.append(self.ids[j])
        return torch.cat(scores).cpu().numpy(), torch.cat(ids).cpu().numpy()


def _as_vectors(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} vectors must be (n, {dim}), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def choose_kind(kind: str, n: int) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        return "flat" if n <= AUTO_EXACT_MAX else "ivf"
    return kind


def build(xb: np.ndarray, ids: np.ndarray, *, kind: str = "auto", fingerprint: str, generation: int) -> VectorIndex:
    """Inner-product index over xb (n, d) with external int64 ids, in host memory (see `place`)."""
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
    return VectorIndex(index, chosen, d, fingerprint, generation)


def place(index: VectorIndex, *, use_gpu: bool | None, device: str = "cuda") -> VectorIndex:
    """An exact index searched on the CUDA `device` when asked (True) or when one is present
    (None); otherwise, and for IVF/HNSW, the index itself."""
    if index.kind != "flat" or use_gpu is False:
        return index
    import torch

    if not torch.cuda.is_available():
        if use_gpu:
            log.warning("no CUDA device here; searching on the CPU")
        return index
    try:
        return index.on_device(device)
    except torch.cuda.OutOfMemoryError:  # pragma: no cover - needs a GPU too small for the vectors
        log.warning("the %d vectors do not fit in GPU memory; searching on the CPU", index.ntotal)
        return index


def to_bytes(index: VectorIndex) -> bytes:
    """The FAISS index plus its kind, fingerprint and generation, as one blob (write it atomically)."""
    import faiss

    cpu = index.faiss_index
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


def from_file(f: BinaryIO, *, fingerprint: str, generation: int, source: str = "vector index") -> VectorIndex:
    """Inverse of to_bytes over a seekable file; the header is checked before the vectors are read."""
    import faiss

    meta = header(f, fingerprint=fingerprint, generation=generation, source=source)
    f.seek(0)
    try:
        with np.load(f) as z:
            raw = z["faiss"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactMismatchError(f"{source} is unreadable ({e})") from e
    try:
        index = faiss.deserialize_index(raw)
    except RuntimeError as e:  # bytes that pass the zip's CRC yet are no FAISS index
        raise ArtifactMismatchError(f"{source} is damaged ({str(e).splitlines()[0] if str(e) else e!r})") from e
    if index.ntotal != meta["ntotal"] or index.d != meta["dim"]:
        raise ArtifactMismatchError(f"{source} is damaged (size does not match its header)")
    return VectorIndex(index, meta["kind"], int(meta["dim"]), fingerprint, int(meta["generation"]))


def from_bytes(data: bytes, *, fingerprint: str, generation: int, source: str = "vector index") -> VectorIndex:
    """Inverse of to_bytes; ArtifactMismatchError if unreadable, stale or from another configuration."""
    return from_file(io.BytesIO(data), fingerprint=fingerprint, generation=generation, source=source)

"""VectorIndex, the searchable index in memory (host, torch on a GPU, or FAISS's GPU code), and
`place`, which chooses where it is searched."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exact_file import EXACT_HEADER

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # the most results FAISS's GPU k-selection returns; larger k search on the host
# ivfpq search: a shortlist of max(40 k, 2000) re-scored exactly (docs/throughput.md, "Compressed index")
RESCORE_FACTOR, RESCORE_MIN = 40, 2000


@dataclass
class VectorIndex:
    """`faiss_index` always lives in host memory (it is what gets saved); `exact_on`, when set,
    is a copy of an exact index's vectors on a GPU that answers the searches."""

    faiss_index: Any
    kind: str
    dim: int
    fingerprint: str
    data_version: int
    exact_on: TorchExact | None = None
    on_gpu: Any = None  # ivf / ivfpq: FAISS's GPU copy of faiss_index (`on_faiss_gpu`), used for searches it can take
    # ivfpq only: FAISS holds row numbers; row_ids maps them to external ids, and `exact` is the
    # memory-mapped (ntotal, dim) float32 file of the vectors themselves (re-scoring, read-back).
    row_ids: np.ndarray | None = None
    exact: np.ndarray | None = None
    token: str = ""  # ivfpq: ties the saved index to the one exact file written with it
    exact_crc: np.ndarray | None = None  # ivfpq: (blocks,) uint32, CRC32 of each EXACT_BLOCK bytes of the rows
    rescore_min: int = RESCORE_MIN  # ivfpq: the shortlist's floor (benchmarks vary it)

    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def ids(self) -> np.ndarray:
        """(ntotal,) int64: the external ids, in the order the vectors were added."""
        import faiss

        if self.row_ids is not None:
            return self.row_ids.copy()
        return faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32: the indexed vectors of these external ids (query expansion);
        ivfpq reads them from its exact file, the others reconstruct them from FAISS."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        if self.row_ids is None:
            return np.stack([self.faiss_index.reconstruct(int(i)) for i in ids]).astype(np.float32)
        assert self.exact is not None
        last = len(self.row_ids) - 1
        # the engine adds rows in ascending id order (the store's), so a binary search finds them
        # without sorting all n ids per call; any other order is sorted once for this call
        rows = np.minimum(np.searchsorted(self.row_ids, ids), last)
        if not (self.row_ids[rows] == ids).all():
            order = np.argsort(self.row_ids, kind="stable")
            rows = order[np.minimum(np.searchsorted(self.row_ids, ids, sorter=order), last)]
        if not (self.row_ids[rows] == ids).all():
            raise KeyError(f"ids not in the index: {ids[self.row_ids[rows] != ids][:5].tolist()}")
        return np.asarray(self.exact[rows], np.float32)

    def nbytes(self) -> int:
        """Bytes of the arrays the index holds in memory (vectors or codes, ids, centroids,
        rotation; not allocator overhead nor FAISS's id->slot hash map). ivfpq's exact file is on
        disk and not counted (see `exact_nbytes`)."""
        import faiss

        n, d = self.ntotal, self.dim
        if self.kind == "flat":
            return n * (4 * d + 8)
        index: Any = faiss.downcast_index(self.faiss_index.index if self.row_ids is None else self.faiss_index)
        if self.kind == "hnsw":
            links = faiss.vector_to_array(index.hnsw.neighbors).nbytes + faiss.vector_to_array(index.hnsw.offsets).nbytes
            return n * (4 * d + 8) + links
        ivf: Any = index
        codes = n * (ivf.code_size + 8)  # inverted lists: a code and an int64 id per vector
        extra = ivf.nlist * d * 4  # coarse centroids
        if self.kind == "ivf":
            return codes + extra + n * 8 + n * 8  # + IndexIDMap2's ids + the direct map
        pq: Any = ivf.pq
        extra += pq.M * pq.ksub * pq.dsub * 4  # PQ codebooks
        return codes + extra + n * 8  # + row_ids

    def exact_nbytes(self) -> int:
        """ivfpq: bytes of the memory-mapped exact file on disk (0 for the other kinds)."""
        return 0 if self.exact is None else EXACT_HEADER + self.ntotal * self.dim * 4

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
        if self.row_ids is not None:
            return self._search_rescored(xq, k)
        searcher = self.exact_on or self._faiss_for(k)
        scores, ids = searcher.search(xq, k)
        return scores.astype(np.float32), ids.astype(np.int64)

    def _faiss_for(self, k: int) -> Any:
        """The FAISS index to ask for k results: the GPU copy when there is one and k is within
        what FAISS's GPU k-selection takes, else the host index."""
        return self.on_gpu if self.on_gpu is not None and k <= GPU_MAX_K else self.faiss_index

    def on_faiss_gpu(self, gpu: int) -> VectorIndex:
        """This IVF / IVF-PQ index with a copy on FAISS GPU `gpu` that answers its searches (the
        caller has checked FAISS's GPU code first: faiss_gpu.probe). PQ lookup tables in fp16,
        which codes above 48 bytes need on a GPU; codes above 96 bytes only in FAISS's interleaved
        list layout (its other kernels take at most 96). Not yet run on a GPU (docs/scale.md)."""
        import faiss

        if self.kind not in ("ivf", "ivfpq"):
            raise ValueError(f"only IVF indexes search on FAISS's GPU code, not {self.kind!r}")
        res = faiss.StandardGpuResources()
        if self.kind == "ivfpq" and self.faiss_index.pq.M > 96:  # FAISS's cloner would pick the other layout
            config: Any = faiss.GpuIndexIVFPQConfig()
            config.device, config.useFloat16LookupTables, config.interleavedLayout = gpu, True, True
            return dataclasses.replace(self, on_gpu=faiss.GpuIndexIVFPQ(res, self.faiss_index, config))
        options: Any = faiss.GpuClonerOptions()
        options.useFloat16 = True
        return dataclasses.replace(self, on_gpu=faiss.index_cpu_to_gpu(res, gpu, self.faiss_index, options))

    def _search_rescored(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ivfpq: a shortlist of max(RESCORE_FACTOR k, RESCORE_MIN) (at most ntotal) from the
        codes, re-scored with exact inner products against the memory-mapped vectors."""
        assert self.exact is not None and self.row_ids is not None
        shortlist = min(self.ntotal, max(RESCORE_FACTOR * k, self.rescore_min))
        _, rows = self._faiss_for(shortlist).search(xq, shortlist)
        scores = np.full((len(xq), k), -np.inf, np.float32)
        ids = np.full((len(xq), k), -1, np.int64)
        for j, found in enumerate(rows):
            r = np.unique(found[found >= 0])  # sorted: the file is read front to back
            s = np.nan_to_num(np.asarray(self.exact[r], np.float32) @ xq[j], nan=-np.inf)  # NaN last, as FAISS
            top = np.argsort(-s, kind="stable")[:k]
            scores[j, : len(top)] = s[top]
            ids[j, : len(top)] = self.row_ids[r[top]]
        return scores, ids


@dataclass(frozen=True)
class TorchExact:
    """Exact inner-product search as matrix products on a torch device: the GPU path.

    Exact search needs nothing beyond PyTorch, which is installed for the model and runs on every
    GPU it supports (its speed: docs/throughput.md, "Exact search on the GPU"); FAISS's GPU
    build (`retrieval[gpu]`, faiss_gpu.probe) is used for IVF indexes only.
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


def place(index: VectorIndex, *, use_gpu: bool | None, device: str = "cuda",
          faiss_gpus: Callable[[], tuple[int, str]] | None = None) -> VectorIndex:
    """The index searched on the CUDA `device` when asked (True) or when one is present (None):
    an exact index through torch; an IVF / IVF-PQ index through FAISS's GPU code when
    `faiss_gpus()` (the caller's cached faiss_gpu.probe: number of GPUs, reason when none) says it
    works here. Otherwise, and for HNSW, the index itself."""
    if index.kind not in ("flat", "ivf", "ivfpq") or use_gpu is False:
        return index
    import torch

    if not torch.cuda.is_available():
        if use_gpu:
            log.warning("no CUDA device here; searching on the CPU")
        return index
    if index.kind == "ivfpq" and index.rescore_min > GPU_MAX_K:
        (log.warning if use_gpu else log.info)(
            "ivfpq index searched on the CPU: it re-scores %d candidates, more than FAISS's GPU search returns "
            "(%d)", index.rescore_min, GPU_MAX_K)
        return index
    if index.kind != "flat":
        gpus, reason = faiss_gpus() if faiss_gpus is not None else (0, "no FAISS GPU check was made")
        gpu = torch.device(device).index or 0
        if gpu >= gpus:
            (log.warning if use_gpu else log.info)("%s index searched on the CPU: %s", index.kind,
                                                   reason or f"FAISS sees {gpus} GPU(s), not GPU {gpu}")
            return index
        try:
            return index.on_faiss_gpu(gpu)
        except (RuntimeError, MemoryError) as e:  # FAISS's errors (out of GPU memory, say) are RuntimeErrors
            log.warning("%s index searched on the CPU: FAISS could not copy it to GPU %d (%s)", index.kind, gpu,
                        str(e).splitlines()[0] if str(e) else repr(e))
            return index
    try:
        return index.on_device(device)
    except torch.cuda.OutOfMemoryError:  # pragma: no cover - needs a GPU too small for the vectors
        log.warning("the %d vectors do not fit in GPU memory; searching on the CPU", index.ntotal)
        return index

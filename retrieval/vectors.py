"""FAISS inner-product index over L2-normalised vectors: build, search, save, load.

Always derived from the store; it carries the fingerprint and store generation it was built
from, and `from_bytes` refuses data whose fingerprint or generation does not match (the caller
then rebuilds it). The engine opens the files; this module reads and writes their contents.
Arrays: xb (n, d) / xq (m, d) float32 C-contiguous, ids int64; search returns (scores, ids), each
(m, min(k, n)), best first: `k` is clamped to what exists, never used to size an allocation (a
user's `-k 1000000000` must not exhaust memory). An approximate index may still find fewer than
that for some query: those slots hold id -1 and score -inf.

Kind `ivfpq` (10M-1B vectors) keeps only compressed codes in memory: FAISS IVF over PQ codes
gives a shortlist, which is re-scored exactly against the float vectors in a separate file that
is memory-mapped, never read whole (`exact_path`; its header carries the fingerprint, the
generation and a build token that the saved index must match; the saved index carries a CRC32 of
each EXACT_BLOCK bytes of its rows, checked when it is opened: see `attach_exact`). `build_chunked` builds any kind
from a training sample plus an iterator of (ids, vectors) chunks, so the caller never holds every
vector at once.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from .config import INDEX_KINDS
from .errors import ArtifactMismatchError

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # the most results FAISS's GPU k-selection returns; larger k search on the host
AUTO_EXACT_MAX = 1_000_000  # exact search up to this many vectors (scripts/bench_query.py, docs/throughput.md)
# ivfpq (docs/index.md; chosen by scripts/bench_query.py --ivfpq-sweep, whose recall and latency
# at each setting are in docs/throughput.md, "Compressed index", and the reasons in docs/decisions.md)
PQ_DIMS, PQ_BYTES_MAX = 4, 256  # PQ: one 8-bit code per 4 dimensions (768-d: 192 bytes), at most 256 bytes
# ivfpq search: nprobe 1024 of ~2 sqrt(n) lists, and a shortlist of max(40 k, 2000) re-scored exactly
IVFPQ_NPROBE = 1024
RESCORE_FACTOR, RESCORE_MIN = 40, 2000
NLIST_MAX = 65_536
TRAIN_PER_LIST = 39  # k-means training sample per inverted list (FAISS's own minimum)
EXACT_MAGIC = b"RETRIEVAL-EXACT1"
EXACT_HEADER = 4096  # bytes before the first float row of an exact-vectors file
# each EXACT_BLOCK bytes of its rows have a CRC32, kept in the saved index. Opening verifies every
# block of a file of up to VERIFY_ALL_MAX bytes of rows, and VERIFY_SAMPLE blocks picked at random of a
# larger one (what verifying all of them would cost: docs/index.md, "Checksums of vectors.f32");
# `retrieve check` verifies every block (docs/index.md, "Damage and recovery")
EXACT_BLOCK = 1 << 20
VERIFY_ALL_MAX = 1 << 30
VERIFY_SAMPLE = 32


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


def build(xb: np.ndarray, ids: np.ndarray, *, kind: str = "auto", fingerprint: str, generation: int,
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
                         generation=generation, exact_path=exact_path)


def build_chunked(sample: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, n: int, dim: int,
                  kind: str = "auto", fingerprint: str, generation: int,
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
        return _build_ivfpq(sample, chunks, n=n, dim=dim, fingerprint=fingerprint, generation=generation,
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
    return VectorIndex(index, chosen, dim, fingerprint, generation)


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
                 fingerprint: str, generation: int, exact_path: Path) -> VectorIndex:
    index = _ivfpq_index(dim, n, _as_vectors(sample, dim, "training") if n else np.zeros((0, dim), np.float32))
    token = secrets.token_hex(8)
    meta = {"fingerprint": fingerprint, "generation": generation, "token": token, "ntotal": n, "dim": dim}
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
    out = VectorIndex(index, "ivfpq", dim, fingerprint, generation, row_ids=row_ids, token=token,
                      exact_crc=crc.blocks())
    return attach_exact(out, exact_path, verify=False)  # just written: its checksums were taken from memory


class _BlockCRC:
    """CRC32 of each EXACT_BLOCK bytes of a stream fed in pieces of any size (the last block may be short)."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.crc, self.filled = 0, 0

    def update(self, data: memoryview) -> None:
        while len(data):
            part, data = data[: EXACT_BLOCK - self.filled], data[EXACT_BLOCK - self.filled:]
            self.crc, self.filled = zlib.crc32(part, self.crc), self.filled + len(part)
            if self.filled == EXACT_BLOCK:
                self.done.append(self.crc)
                self.crc, self.filled = 0, 0

    def blocks(self) -> np.ndarray:
        return np.array(self.done + ([self.crc] if self.filled else []), np.uint32)


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


def _exact_header(meta: dict[str, Any]) -> bytes:
    head = EXACT_MAGIC + json.dumps(meta).encode()
    assert len(head) <= EXACT_HEADER
    return head + b"\0" * (EXACT_HEADER - len(head))


def attach_exact(index: VectorIndex, exact_path: str | Path, *, verify: bool | None = None) -> VectorIndex:
    """`index` (ivfpq) with its exact vectors memory-mapped from `exact_path`;
    ArtifactMismatchError if that file is missing, damaged, stale or from another build.
    verify: check every block's CRC32 (True), none (False), or every block up to VERIFY_ALL_MAX
    bytes of rows and VERIFY_SAMPLE blocks picked at random beyond (None); see `damaged_blocks`."""
    exact_path = Path(exact_path)
    source = f"exact vectors {exact_path}"
    try:
        with open(exact_path, "rb") as f:
            head = f.read(EXACT_HEADER)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise ArtifactMismatchError(f"{source} is missing ({e.strerror or e})") from e
    try:
        if not head.startswith(EXACT_MAGIC):
            raise ValueError("not an exact-vectors file")
        meta = json.loads(head[len(EXACT_MAGIC):].rstrip(b"\0"))
    except ValueError as e:
        raise ArtifactMismatchError(f"{source} is unreadable ({e})") from e
    if meta.get("fingerprint") != index.fingerprint or meta.get("generation") != index.generation:
        raise ArtifactMismatchError(f"{source} is stale (another configuration or store generation)")
    if meta.get("token") != index.token:
        raise ArtifactMismatchError(f"{source} belongs to another build of the vector index")
    n, d = index.ntotal, index.dim
    if meta.get("ntotal") != n or meta.get("dim") != d or size != EXACT_HEADER + 4 * n * d:
        raise ArtifactMismatchError(f"{source} is damaged (size does not match its header)")
    if index.exact_crc is None or len(index.exact_crc) != -(-4 * n * d // EXACT_BLOCK):
        raise ArtifactMismatchError(f"{source}: the vector index holds no checksums of its blocks (an older version "
                                    f"wrote it)")
    exact = (np.memmap(exact_path, np.float32, "r", offset=EXACT_HEADER, shape=(n, d)) if n
             else np.zeros((0, d), np.float32))
    out = dataclasses.replace(index, exact=exact)
    if verify is not False:
        bad = damaged_blocks(out, None if verify or 4 * n * d <= VERIFY_ALL_MAX else VERIFY_SAMPLE)
        if bad:
            raise ArtifactMismatchError(f"{source} is damaged ({damage(out, bad)})")
    return out


def damaged_blocks(index: VectorIndex, blocks: int | None = None) -> list[int]:
    """ivfpq: the blocks of the exact file whose bytes do not match their CRC32, among all of them
    (blocks None) or that many picked at random (a different pick each call)."""
    assert index.exact is not None and index.exact_crc is not None
    if not index.ntotal:
        return []
    raw = np.asarray(index.exact).reshape(-1).view(np.uint8)
    total = len(index.exact_crc)
    picked = (range(total) if blocks is None or blocks >= total
              else np.sort(np.random.default_rng().choice(total, blocks, replace=False)))
    return [int(b) for b in picked
            if zlib.crc32(raw[b * EXACT_BLOCK: (b + 1) * EXACT_BLOCK].data) != int(index.exact_crc[b])]


def damage(index: VectorIndex, bad: list[int]) -> str:
    """What `damaged_blocks` found, in words."""
    total = 0 if index.exact_crc is None else len(index.exact_crc)
    return (f"{len(bad)} of its {total} blocks fail their checksum, the first at byte "
            f"{EXACT_HEADER + bad[0] * EXACT_BLOCK}")


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


def to_bytes(index: VectorIndex) -> bytes:
    """The FAISS index plus its kind, fingerprint and generation, as one blob (write it atomically)."""
    import faiss

    cpu = index.faiss_index
    meta = json.dumps({"kind": index.kind, "dim": index.dim, "fingerprint": index.fingerprint,
                       "generation": index.generation, "ntotal": index.ntotal, "token": index.token})
    buf = io.BytesIO()
    arrays: dict[str, Any] = {"faiss": faiss.serialize_index(cpu), "meta": np.array(meta)}
    if index.row_ids is not None:
        arrays["row_ids"] = index.row_ids
    if index.exact_crc is not None:
        arrays["exact_crc"] = index.exact_crc
    np.savez(buf, **arrays)
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


def from_file(f: BinaryIO, *, fingerprint: str, generation: int, source: str = "vector index",
              exact_path: str | Path | None = None, verify: bool | None = None) -> VectorIndex:
    """Inverse of to_bytes over a seekable file; the header is checked before the vectors are read.
    An ivfpq index also maps its exact vectors from `exact_path` (checked: see `attach_exact`,
    which takes `verify`)."""
    import faiss

    meta = header(f, fingerprint=fingerprint, generation=generation, source=source)
    if meta["kind"] == "ivfpq" and exact_path is None:
        raise ValueError("an ivfpq index needs exact_path, the file that holds its exact vectors")
    f.seek(0)
    row_ids = crc = None
    try:
        with np.load(f) as z:
            raw = z["faiss"]
            if meta["kind"] == "ivfpq":
                row_ids = np.ascontiguousarray(z["row_ids"], np.int64)
                crc = np.ascontiguousarray(z["exact_crc"], np.uint32) if "exact_crc" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactMismatchError(f"{source} is unreadable ({e})") from e
    try:
        index = faiss.deserialize_index(raw)
    except RuntimeError as e:  # bytes that pass the zip's CRC yet are no FAISS index
        raise ArtifactMismatchError(f"{source} is damaged ({str(e).splitlines()[0] if str(e) else e!r})") from e
    if index.ntotal != meta["ntotal"] or index.d != meta["dim"] or (row_ids is not None and len(row_ids) != index.ntotal):
        raise ArtifactMismatchError(f"{source} is damaged (size does not match its header)")
    code = int(cast(Any, index).pq.M) if meta["kind"] == "ivfpq" else 0
    if code and code != pq_bytes(index.d):  # its shortlist length is chosen for today's codes
        raise ArtifactMismatchError(f"{source} holds {code}-byte codes, this version builds {pq_bytes(index.d)}")
    out = VectorIndex(index, meta["kind"], int(meta["dim"]), fingerprint, int(meta["generation"]),
                      row_ids=row_ids, token=str(meta.get("token", "")), exact_crc=crc)
    return out if row_ids is None else attach_exact(out, exact_path, verify=verify)  # type: ignore[arg-type]


def from_bytes(data: bytes, *, fingerprint: str, generation: int, source: str = "vector index",
               exact_path: str | Path | None = None, verify: bool | None = None) -> VectorIndex:
    """Inverse of to_bytes; ArtifactMismatchError if unreadable, stale or from another configuration."""
    return from_file(io.BytesIO(data), fingerprint=fingerprint, generation=generation, source=source,
                     exact_path=exact_path, verify=verify)

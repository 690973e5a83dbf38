"""FAISS inner-product index over L2-normalised vectors: build, search, save, load.

Always derived from the store; it carries the fingerprint and the store's data version
(`Store.data_version`; the files keep the key "generation") it was built from, and `from_bytes`
refuses data whose fingerprint or data version does not match (the caller then rebuilds it). The engine opens the files; this package reads and writes their contents.
Arrays: xb (n, d) / xq (m, d) float32 C-contiguous, ids int64; search returns (scores, ids), each
(m, min(k, n)), best first: `k` is clamped to what exists, never used to size an allocation (a
user's `-k 1000000000` must not exhaust memory). An approximate index may still find fewer than
that for some query: those slots hold id -1 and score -inf.

Kind `ivfpq` (10M-1B vectors) keeps only compressed codes in memory: FAISS IVF over PQ codes
gives a shortlist, which is re-scored exactly against the float vectors in a separate file that
is memory-mapped, never read whole (`exact_path`; its header carries the fingerprint, the
data version and a build token that the saved index must match; the saved index carries a CRC32 of
each EXACT_BLOCK bytes of its rows, checked when it is opened: see `attach_exact`). `build_chunked` builds any kind
from a training sample plus an iterator of (ids, vectors) chunks, so the caller never holds every
vector at once.

One module a concern: `vector_index` (VectorIndex, searching, `place`), `building` (the kinds and
how each is built), `exact_file` (ivfpq's memory-mapped exact vectors and their checksums),
`saving` (to and from bytes), `graph` (a temporary IVF for the kNN graph of the index's own vectors,
`retrieve dedupe`). Callers import from the package.
"""

from .building import (
    AUTO_EXACT_MAX,
    IVFPQ_NPROBE,
    NLIST_MAX,
    PQ_BYTES_MAX,
    PQ_DIMS,
    TRAIN_PER_LIST,
    build,
    build_chunked,
    choose_kind,
    pq_bytes,
    train_rows,
    train_size,
)
from .exact_file import (
    EXACT_BLOCK,
    EXACT_HEADER,
    EXACT_MAGIC,
    VERIFY_ALL_MAX,
    VERIFY_SAMPLE,
    attach_exact,
    damage,
    damaged_blocks,
)
from .graph import GRAPH_MIN, GraphIndex, graph_index
from .saving import from_bytes, from_file, header, to_bytes
from .vector_index import GPU_MAX_K, RESCORE_FACTOR, RESCORE_MIN, TorchExact, VectorIndex, place

__all__ = [
    "AUTO_EXACT_MAX", "EXACT_BLOCK", "EXACT_HEADER", "EXACT_MAGIC", "GPU_MAX_K", "GRAPH_MIN", "IVFPQ_NPROBE",
    "NLIST_MAX", "PQ_BYTES_MAX", "PQ_DIMS", "RESCORE_FACTOR", "RESCORE_MIN", "TRAIN_PER_LIST", "VERIFY_ALL_MAX",
    "VERIFY_SAMPLE", "GraphIndex", "TorchExact", "VectorIndex", "attach_exact", "build", "build_chunked",
    "choose_kind", "damage", "damaged_blocks", "from_bytes", "from_file", "graph_index", "header", "pq_bytes",
    "place", "to_bytes", "train_rows", "train_size",
]

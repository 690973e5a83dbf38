"""The exact-vectors file of an ivfpq index (vectors.f32): its header, the CRC32 of each
EXACT_BLOCK bytes of its rows, and opening it memory-mapped with those checked (`attach_exact`)."""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ArtifactMismatchError

if TYPE_CHECKING:
    from .vector_index import VectorIndex

EXACT_MAGIC = b"RETRIEVAL-EXACT1"
EXACT_HEADER = 4096  # bytes before the first float row of an exact-vectors file
# each EXACT_BLOCK bytes of its rows have a CRC32, kept in the saved index. Opening verifies every
# block of a file of up to VERIFY_ALL_MAX bytes of rows, and VERIFY_SAMPLE blocks picked at random of a
# larger one (what verifying all of them would cost: docs/index.md, "Checksums of vectors.f32");
# `retrieve check` verifies every block (docs/index.md, "Damage and recovery")
EXACT_BLOCK = 1 << 20
VERIFY_ALL_MAX = 1 << 30
VERIFY_SAMPLE = 32


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
    if meta.get("fingerprint") != index.fingerprint or meta.get("generation") != index.data_version:
        raise ArtifactMismatchError(f"{source} is stale (another configuration or store data version)")
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

"""The store's row types: what a row holds (FileRow; ImageFacts, the part dedupe needs), the
changes a transaction applies (Upsert, Touch, Move) and what `retrieve check` reads of its blobs
(BlobSizes), with the conversions between them and SQLite's columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..types import int64_id, int64_time
from .paths import _path_out

DESCRIPTOR_DTYPE = np.dtype(np.float32)  # a raw global descriptor is stored as D of these (Store._stacked reads them)
_ROW = "id, path, size, mtime_ns, sha256, status, error, ctime_ns, inode, indexed_ns"  # FileRow's columns


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    nbytes: int  # the file's size in bytes (column `size`)
    mtime_ns: int
    sha256: str | None
    status: str
    error: str | None
    ctime_ns: int | None = None  # None: not known (a row from schema 2, filled in by the next update)
    inode: int | None = None
    indexed_ns: int | None = None  # when it was last embedded or refused; None: before schema 4


class ImageFacts(NamedTuple):
    """What choosing among copies needs of a row (dedupe): path, pixels, mtime, hash."""

    id: int
    path: str
    width: int | None
    height: int | None
    mtime_ns: int
    sha256: str | None


class Touch(NamedTuple):
    """A file's new size and times (and inode) where its bytes are what the row holds."""

    id: int
    nbytes: int
    mtime_ns: int
    ctime_ns: int | None = None
    inode: int | None = None


class Move(NamedTuple):
    """A file found at a new path with the bytes a row holds: the row takes the path and the stat;
    its id and descriptors stay (the vector index is unchanged)."""

    id: int
    path: str
    nbytes: int
    mtime_ns: int
    ctime_ns: int | None = None
    inode: int | None = None


@dataclass(frozen=True)
class Upsert:
    """A file's new state. descriptor is None for skipped files."""

    path: str
    nbytes: int  # the file's size in bytes (column `size`)
    mtime_ns: int
    sha256: str | None
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    descriptor: np.ndarray | None = None
    local_feats: bytes | None = None
    local_coords: bytes | None = None
    grid: tuple[int, int] | None = None
    ctime_ns: int | None = None
    inode: int | None = None


@dataclass(frozen=True)
class BlobSizes:
    """Sizes in bytes of one row's blobs (None where NULL), for `retrieve check`."""

    id: int
    status: str
    descriptor: int | None
    local_feats: int | None
    local_coords: int | None
    grid_h: int | None
    grid_w: int | None


def _file_row(r: Sequence[Any]) -> FileRow:
    return FileRow(r[0], _path_out(r[1]), *r[2:])


def descriptor_bytes(dim: int) -> int:
    """Size in bytes of a stored global descriptor of `dim` values."""
    return dim * DESCRIPTOR_DTYPE.itemsize


def _stat(mtime_ns: int, ctime_ns: int | None, inode: int | None) -> tuple[int, int | None, int | None]:
    """A file's times and inode as SQLite INTEGERs (int64), None kept as NULL: whatever a caller
    passes, one file's odd metadata never fails the transaction it is in."""
    return (int64_time(mtime_ns), None if ctime_ns is None else int64_time(ctime_ns),
            None if inode is None else int64_id(inode))

"""Shared value types. Arrays are row-major `(n, d)`."""

from __future__ import annotations

import math
import os
import stat
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TokenBatch:
    """Backbone output after the final norm.

    cls: (n, d); patches: (n, h*w, d), registers excluded, row-major over the grid;
    grid: (h, w) patches per column and row; registers: (n, r, d), the register tokens (DINOv2
    `_reg`) or storage tokens (DINOv3) in the model's order, None when not kept.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]
    registers: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n, d = self.cls.shape
        h, w = self.grid
        if tuple(self.patches.shape) != (n, h * w, d):
            raise ValueError(
                f"patches shape {tuple(self.patches.shape)} does not match cls {(n, d)} and grid {self.grid}"
            )


@dataclass(frozen=True)
class Skipped:
    """A file refused on its way to the model: its position in the input, path, the reason and
    the fix its reader named (None: BadImageError's generic one)."""

    index: int
    path: str
    reason: str
    fix: str | None = None


Box = tuple[float, float, float, float]  # a query's box: x1, y1, x2, y2 in pixels of the upright picture


def parse_box(text: str, *, name: str = "--bbox", quoted: str | None = None) -> Box:
    """`x1,y1,x2,y2` -> Box: four finite numbers with x2 > x1 and y2 > y1 (`retrieve query --bbox`,
    POST /api/search's `bbox`); UsageError naming `name` and quoting the text (`quoted`, else its
    repr) otherwise. Where the box lies is checked against the image later: `box_inside`, or the
    crop (images.crop_box), which keeps the part inside the image."""
    shown_text = repr(text) if quoted is None else quoted
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{name} must be x1,y1,x2,y2 in pixels of the upright image, got {shown_text}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise UsageError(f"{name} needs finite numbers, got {shown_text}")
    if x2 <= x1 or y2 <= y1:
        raise UsageError(f"{name} needs x2 > x1 and y2 > y1, got {shown_text}")
    return x1, y1, x2, y2


def box_fits(box: Box, size: tuple[int, int]) -> bool:
    """Whether the box lies inside an image of size (w, h), edges included."""
    (x1, y1, x2, y2), (w, h) = box, size
    return 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def box_inside(box: Box, size: tuple[int, int], *, name: str = "bbox") -> None:
    """UsageError unless the box lies inside an image of size (w, h), edges included (box_fits)."""
    (x1, y1, x2, y2), (w, h) = box, size
    if not box_fits(box, size):
        raise UsageError(f"{name} {x1:g},{y1:g},{x2:g},{y2:g} is not inside the {w}x{h} image; "
                         f"pass x1,y1,x2,y2 with 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h}")


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # what an SQLite INTEGER holds


def int64_time(ns: int) -> int:
    """A file time in ns as the store keeps it: clamped to the int64 range (1677-09-21 to
    2262-04-11). A file dated past 2262 (`touch -d 2999-01-01`; btrfs, XFS and ext4 keep such
    times) is stored as 2262-04-11: its later changes still show in its ctime and size."""
    return min(max(int(ns), INT64_MIN), INT64_MAX)


def int64_id(n: int) -> int:
    """An unsigned 64-bit number (an inode: st_ino is unsigned, and NFS, FUSE and overlayfs give
    ones past 2**63) as a signed int64 with the same bits: exact, so equal inodes stay equal."""
    return ((int(n) + (1 << 63)) % (1 << 64)) - (1 << 63)


@dataclass(frozen=True)
class ImageRef:
    """A file found on disk: absolute path, size in bytes, modification and status-change times
    in ns, and inode (None: not known). The ctime and inode catch what size and mtime miss: a
    file rewritten with its old mtime restored (`cp` then `touch -d`), or replaced by another
    file of the same size and date (an atomic save, a restore). Use `of` to make one from a stat:
    its numbers are then what the store holds (int64_time, int64_id)."""

    path: str
    nbytes: int
    mtime_ns: int
    ctime_ns: int | None = None
    inode: int | None = None

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> ImageRef:
        return cls(path, st.st_size, int64_time(st.st_mtime_ns), int64_time(st.st_ctime_ns), int64_id(st.st_ino))


_UNSHOWN = frozenset({"Cc", "Zl", "Zp"})  # Unicode categories of control characters and line breaks


def shown(text: str) -> str:
    """Text for people (and for UTF-8 files): a file name's bytes that are not UTF-8, which Python
    carries as surrogate escapes (os.fsdecode), written as \\xNN; control characters and line
    breaks as Python writes them (\\t, \\n, \\x1b, \\u2028), so that a name stays on one line and
    never drives the terminal. Other text, spaces and non-ASCII letters included, is unchanged."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in _UNSHOWN else c for c in text)


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is (from its st_mode), for messages."""
    kinds = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
             stat.S_IFSOCK: "a socket"}
    return kinds.get(stat.S_IFMT(mode), "a special file")

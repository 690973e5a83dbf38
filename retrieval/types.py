"""Shared value types. Arrays are row-major `(n, d)`."""

from __future__ import annotations

import stat
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TokenBatch:
    """Backbone output after the final norm.

    cls: (n, d); patches: (n, h*w, d), registers excluded, row-major over the grid;
    grid: (h, w) patches per column and row.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]

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


@dataclass(frozen=True)
class ImageRef:
    """A file found on disk: absolute path, size in bytes, modification time in ns."""

    path: str
    nbytes: int
    mtime_ns: int


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

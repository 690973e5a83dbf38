"""Paths as the store keeps them (losslessly, whatever their bytes) and which paths lie under which."""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence


def _path_in(path: str) -> str | bytes:
    """A path as stored: TEXT when it is valid UTF-8, else its file-system bytes (a BLOB)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _path_out(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


class PathFilter:
    """`path in PathFilter(roots)`: is path one of the roots or inside one? O(log n) per test.

    Roots nested in other roots are dropped; the rest are sorted by path components, so the only
    candidate ancestor of a path is the greatest root not after it.
    """

    def __init__(self, roots: Sequence[str]) -> None:
        parts = sorted({_parts(r) for r in roots})
        kept: list[tuple[str, ...]] = []
        for p in parts:
            if not kept or p[: len(kept[-1])] != kept[-1]:
                kept.append(p)
        self._roots = kept

    def roots(self) -> list[str]:
        """The roots kept (none inside another), as absolute paths without a trailing '/' ('' for '/')."""
        return ["/" + "/".join(p) if p else "" for p in self._roots]

    def __contains__(self, path: object) -> bool:
        p = _parts(str(path))
        i = bisect.bisect_right(self._roots, p) - 1
        return i >= 0 and p[: len(self._roots[i])] == self._roots[i]


def _parts(path: str) -> tuple[str, ...]:
    return tuple(x for x in path.split("/") if x)

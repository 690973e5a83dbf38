"""Paths as the store keeps them (losslessly, whatever their bytes) and which paths lie under which."""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from typing import Any


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


def _ranges(roots: Sequence[str] | None) -> list[tuple[str, list[Any]]]:
    """WHERE clauses (with their arguments) that together select the paths equal to or inside one of
    `roots`, each one range of the path index: per root the path itself, then `root/` up to `root0`
    ('0' is the byte after '/'), once as TEXT and once as the file system's bytes (SQLite orders all
    TEXT before any BLOB, so each range holds only its own kind). Roots inside others are dropped."""
    kept = None if roots is None else PathFilter(roots).roots()
    if kept is None or "" in kept:  # everything (the file system's root holds every path)
        return [("1", [])]
    out: list[tuple[str, list[Any]]] = []
    for root in kept:
        for kind in (root, os.fsencode(root)):
            if isinstance(kind, str) and _path_in(kind) != kind:  # not UTF-8: no TEXT path lies under it
                continue
            slash, zero = ("/", "0") if isinstance(kind, str) else (b"/", b"0")
            out += [("path = ?", [kind]), ("path >= ? AND path < ?", [kind + slash, kind + zero])]  # type: ignore[operator]
    return out

"""Indexed files by name: the listing of `retrieve list`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..store import FileRow, Store


def listing(store: Store, paths: Sequence[str | Path] | None, *, skipped: bool = False) -> Iterator[FileRow]:
    """Indexed files (skipped: refused ones) by path, at or under `paths` (each by its real path and
    as given made absolute) or all: a generator over SQLite cursors, never the whole table in memory."""
    under = None if paths is None else list(dict.fromkeys(
        t for p in paths for t in (os.path.realpath(p), os.path.abspath(p))))
    return store.listing(under=under, status="skipped" if skipped else "ok")


__all__ = ["listing"]

"""Indexed files by name: one named by path or id (`retrieve query --like`), the listing of
`retrieve list`, and the query made of an indexed file's stored descriptors.

Nothing here decodes an image or imports torch: a search "more like" an indexed file starts from
the descriptor the store holds (and re-ranks with its stored local descriptors), as `retrieve
info` starts. Only a row stored without local descriptors (an index from before they existed)
needs its file read again to be re-ranked; the caller does that (`Index.similar`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import local
from ..errors import UsageError
from ..store import FileRow, Store
from ..types import shown
from .commit import stored_pca
from .files import stored_names
from .search import Query

_ID = re.compile(r"(?:id:)?([0-9]+)")


def parse_ref(text: str | int) -> int | str:
    """`id:N` or a bare number N: an id (no indexed file is named by digits alone: names without an
    image extension are never indexed); anything else a path."""
    if isinstance(text, int):
        return text
    m = _ID.fullmatch(text.strip())
    return int(m.group(1)) if m else text


def resolve(store: Store, ref: str | int, *, index: Path) -> FileRow:
    """The indexed file `ref` names: an id, or a path (resolved as `retrieve index` stores them:
    its real path, else the path as given made absolute). UsageError naming the fix when the index
    has no such file, or holds it as refused (no descriptor to search with)."""
    ref = parse_ref(ref)
    if isinstance(ref, int):
        row, what = store.row(ref), f"id {ref}"
    else:
        row, what = next((r for r in map(store.row, stored_names([ref])) if r is not None), None), shown(ref)
    where = shlex.quote(shown(str(index)))
    if row is None:
        raise UsageError(f"{what}: no such file in the index at {where}", fix="look up what the index holds (Index.files "
                         "lists it; an update adds a folder)", command=f"retrieve list --index {where}")
    if row.status != "ok":
        raise UsageError(f"{what}: {shown(row.path)} was refused when indexed ({row.error}), so there is no "
                         f"descriptor to search with", fix="look up the refused files and why (Index.files with "
                         "skipped=True)", command=f"retrieve list --skipped --index {where}")
    return row


def like_query(store: Store, row: FileRow, *, rerank: bool) -> Query:
    """The query of an indexed file, from what the store holds: its raw descriptor and (for re-ranking)
    its stored local descriptors as `features`, None where the row has none (the caller reads its
    file for patch tokens, keeping the descriptor read here)."""
    raw = store.descriptors_of([row.id])
    pca = stored_pca(store) if rerank else None
    blob = None if pca is None else store.local([row.id]).get(row.id)
    if pca is None or blob is None:
        return Query(raw, np.zeros((0, 0), np.float32), (0, 0), indexed_id=row.id)
    feats = local.unpack(blob[0], blob[1], blob[2], pca.dim)
    return Query(raw, np.zeros((0, pca.mean.size), np.float32), feats.grid, features=feats, indexed_id=row.id)


def listing(store: Store, paths: Sequence[str | Path] | None, *, skipped: bool = False) -> Iterator[FileRow]:
    """Indexed files (skipped: refused ones) by path, at or under `paths` (each by its real path and
    as given made absolute) or all: a generator over SQLite cursors, never the whole table in memory."""
    under = None if paths is None else stored_names(paths)
    return store.listing(under=under, status="skipped" if skipped else "ok")


__all__ = ["like_query", "listing", "parse_ref", "resolve"]

"""What an update must do: a pure function of the files found on disk and the rows stored.

Also the exclusions (`retrieve remove`, `--exclude GLOB`) that decide which found files count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from ..errors import UNREADABLE, UsageError
from ..store import FileRow, Move, PathFilter, Touch
from ..types import ImageRef


@dataclass
class Plan:
    embed: list[str] = field(default_factory=list)  # new, changed, or refused files to try again
    known: set[str] = field(default_factory=set)  # found paths that have a row (an embed there is an update)
    deletes: list[int] = field(default_factory=list)  # rows whose files are gone (or now excluded)
    touches: list[Touch] = field(default_factory=list)  # same bytes, new stat (or a stat not recorded before)
    moves: list[Move] = field(default_factory=list)  # a gone row's bytes found at a new path: the row follows them
    unchanged: int = 0
    still_refused: int = 0  # refused before and unchanged since
    hashed: int = 0  # files read to compare their bytes with a stored hash (indexed ones, and possible moves)
    changed: int = 0  # indexed files whose bytes differ from the stored ones (other size or hash): embedded again
    stopped: bool = False  # should_stop() while hashing: files not hashed yet are left as they are


def plan_update(found: Iterable[ImageRef], rows: dict[str, FileRow], *, retry_skipped: bool,
                sha256_of: Callable[[str], str | None], verify: bool = False,
                on_hashed: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False, elsewhere: Iterable[FileRow] = (),
                gone: Callable[[str], bool] = lambda path: False) -> Plan:
    """found: the files under the roots now; rows: the stored rows under the same roots, by path
    (rows in folders that could not be listed left out: unknown is not gone).

    A file whose size, mtime, ctime and inode are the stored ones is unchanged, without reading
    it (a row that has no ctime or inode yet, from schema 2, gets them recorded). An indexed file
    of the same size whose stat differs is hashed, `sha256_of(path)` (None: unreadable): the same bytes only
    update the stored stat, other bytes are embedded; so are files of another size, and files
    refused because they could not be read (permissions come back without a new mtime). With
    `verify` every indexed file is hashed. `on_hashed(done, total)` follows the hashing, which
    stops when `should_stop()` says so. Rows not found are deleted, unless they moved:

    A new file whose size is that of an indexed file that is gone (a row under the roots not
    found, or a row of `elsewhere`, the index's other rows, whose path `gone(path)` says no longer
    exists) is hashed too; the same hash makes it a move: the
    gone row takes the new path and stat, its id and descriptors stay, nothing is embedded. A copy
    whose original is still there is a new file; of two gone rows with the same bytes each moved
    file takes one (the one with its file name first); a moved file whose bytes changed too is a
    delete and an add. A stop while hashing deletes none of
    the rows that a file not hashed yet may have moved from."""
    plan = Plan()
    left = dict(rows)
    suspects, new = _sort_found(plan, found, left, retry_skipped=retry_skipped, verify=verify)
    sources = _move_sources(new, left.values(), elsewhere, gone)
    moving = [ref for ref in new if ref.nbytes in sources]
    plan.embed += [ref.path for ref in new if ref.nbytes not in sources]
    total = len(suspects) + len(moving)
    progress = None if on_hashed is None else (lambda done: on_hashed(done, total))
    _hash(plan, suspects, sha256_of, progress, should_stop)
    if moving and not plan.stopped:
        _hash_moves(plan, moving, sources, sha256_of, progress, should_stop)
    kept = {r.id for by in sources.values() for rs in by.values() for r in rs} if plan.stopped else set()  # may be one
    moved = {m.id for m in plan.moves}
    plan.deletes = [r.id for r in left.values() if r.id not in moved and r.id not in kept]
    return plan


def _sort_found(plan: Plan, found: Iterable[ImageRef], left: dict[str, FileRow], *, retry_skipped: bool,
                verify: bool) -> tuple[list[tuple[ImageRef, FileRow]], list[ImageRef]]:
    """Each found file with a row (popped from `left`) into the plan (unchanged, to embed) or the
    files to hash against their rows; returns those and the files without a row."""
    suspects: list[tuple[ImageRef, FileRow]] = []  # to hash
    new: list[ImageRef] = []
    for ref in found:
        row = left.pop(ref.path, None)
        if row is None:
            new.append(ref)
            continue
        plan.known.add(ref.path)
        if row.status == "skipped" and (retry_skipped or (row.error or "").startswith(UNREADABLE)):
            plan.embed.append(ref.path)  # refused for access, not content: a chmod changes no mtime
        elif _same_stat(row, ref) and not (verify and row.sha256):
            if row.status == "skipped":
                plan.still_refused += 1
            else:
                plan.unchanged += 1
            _touch(plan, row, ref)  # a stat not recorded before (a row from schema 2)
        elif row.sha256 and row.nbytes == ref.nbytes:
            suspects.append((ref, row))
        else:
            plan.changed += row.sha256 is not None
            plan.embed.append(ref.path)
    return suspects, new


def _move_sources(new: Sequence[ImageRef], left: Iterable[FileRow], elsewhere: Iterable[FileRow],
                  gone: Callable[[str], bool]) -> dict[int, dict[str, list[FileRow]]]:
    """The indexed rows a new file may have moved from, by size and hash: gone under the roots
    (`left`), or elsewhere with a size some new file has and a path that is gone."""
    sizes = {ref.nbytes for ref in new}

    def movable(row: FileRow) -> bool:
        return row.nbytes in sizes and row.status == "ok" and row.sha256 is not None

    out: dict[int, dict[str, list[FileRow]]] = {}
    for row in [*filter(movable, left), *(r for r in elsewhere if movable(r) and gone(r.path))]:
        assert row.sha256 is not None
        out.setdefault(row.nbytes, {}).setdefault(row.sha256, []).append(row)
    return out


def _hash_moves(plan: Plan, moving: Sequence[ImageRef], sources: dict[int, dict[str, list[FileRow]]],
                sha256_of: Callable[[str], str | None], progress: Callable[[int], None] | None,
                should_stop: Callable[[], bool]) -> None:
    """Hash each new file of a gone row's size; the same bytes move that row (each row once)."""
    for ref in moving:
        if should_stop():
            plan.stopped = True
            return
        plan.hashed += 1
        digest = sha256_of(ref.path)
        same = sources[ref.nbytes].get(digest or "", [])
        if same:
            name = os.path.basename(ref.path)
            row = next((r for r in same if os.path.basename(r.path) == name), same[0]) if len(same) > 1 else same[0]
            same.remove(row)
            plan.moves.append(Move(row.id, ref.path, ref.nbytes, ref.mtime_ns, ref.ctime_ns, ref.inode))
        else:
            plan.embed.append(ref.path)
        if progress is not None:
            progress(plan.hashed)


def _same_stat(row: FileRow, ref: ImageRef) -> bool:
    """Same size and mtime, and same ctime and inode where both sides know them."""
    return (row.nbytes, row.mtime_ns) == (ref.nbytes, ref.mtime_ns) and all(
        a is None or b is None or a == b for a, b in ((row.ctime_ns, ref.ctime_ns), (row.inode, ref.inode)))


def _touch(plan: Plan, row: FileRow, ref: ImageRef) -> None:
    """Record `ref`'s stat in `row` where it differs from the stored one (what `ref` does not know
    is kept)."""
    ctime = row.ctime_ns if ref.ctime_ns is None else ref.ctime_ns
    inode = row.inode if ref.inode is None else ref.inode
    touch = Touch(row.id, ref.nbytes, ref.mtime_ns, ctime, inode)
    if touch[1:] != (row.nbytes, row.mtime_ns, row.ctime_ns, row.inode):
        plan.touches.append(touch)


def _hash(plan: Plan, suspects: Sequence[tuple[ImageRef, FileRow]], sha256_of: Callable[[str], str | None],
          progress: Callable[[int], None] | None, should_stop: Callable[[], bool]) -> None:
    for ref, row in suspects:
        if should_stop():
            plan.stopped = True
            return
        assert row.sha256 is not None
        plan.hashed += 1
        if sha256_of(ref.path) == row.sha256:  # the same bytes: a touched file
            plan.unchanged += 1
            _touch(plan, row, ref)
        else:
            plan.changed += 1
            plan.embed.append(ref.path)
        if progress is not None:
            progress(plan.hashed)


def emptied_roots(roots: Sequence[str], found: Iterable[ImageRef], rows: Iterable[str]) -> list[tuple[str, int]]:
    """(root, rows under it) for each root under which no image file was found (before
    exclusions) while the index holds rows from it: an unmounted drive or an emptied share looks
    like that, and an update would delete every row it had."""
    filters = {root: PathFilter([root]) for root in roots}
    empty = set(roots)
    for ref in found:
        empty -= {root for root in empty if ref.path in filters[root]}
        if not empty:
            return []
    counts = dict.fromkeys(empty, 0)
    for path in rows:
        for root in empty:
            counts[root] += path in filters[root]
    return [(root, n) for root, n in counts.items() if n]


@dataclass(frozen=True)
class Exclusions:
    """paths: files and folders `retrieve remove` took out; globs: `--exclude` patterns. A glob
    matches a file when it matches the file's path, or one of its folders, from the right, as
    pathlib's PurePath.match does ("Trash", "*.tmp.jpg", "2019/drafts")."""

    paths: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()

    @classmethod
    def from_meta(cls, stored: dict[str, list[str]] | None) -> Exclusions:
        stored = stored or {}
        return cls(tuple(stored.get("paths", ())), tuple(stored.get("globs", ())))

    def to_meta(self) -> dict[str, list[str]]:
        return {"paths": list(self.paths), "globs": list(self.globs)}

    def keeps(self, refs: Iterable[ImageRef]) -> list[ImageRef]:
        out = PathFilter(self.paths)
        return [r for r in refs if r.path not in out and not self._glob(r.path)]

    def _glob(self, path: str) -> bool:
        if not self.globs:
            return False
        p = PurePath(path)
        return any(q.match(g) for g in self.globs for q in (p, *p.parents) if q.name)

    def with_globs(self, globs: Sequence[str]) -> Exclusions:
        bad = [g for g in globs if not g.strip() or g.startswith("/")]
        if bad:
            raise UsageError(f"--exclude {bad[0]!r}: give a pattern relative to any folder, such as 'Trash' or "
                             f"'*.tmp.jpg' (remove a single path with `retrieve remove PATH`)")
        return Exclusions(self.paths, tuple(sorted(set(self.globs) | set(globs))))

    def with_paths(self, paths: Sequence[str]) -> Exclusions:
        return Exclusions(tuple(sorted(set(self.paths) | set(paths))), self.globs)

    def lifted_by(self, roots: Sequence[str]) -> Exclusions:
        """Naming a path to index takes back an exclusion made by `remove` at that path or around
        it (a whole excluded folder, when a file inside it is named); indexing a folder that
        merely holds excluded paths leaves them out."""
        return Exclusions(tuple(p for p in self.paths if not any(r in PathFilter([p]) for r in roots)), self.globs)

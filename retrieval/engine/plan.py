"""What an update must do: a pure function of the files found on disk and the rows stored.

Also the exclusions (`retrieve remove`, `--exclude GLOB`) that decide which found files count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from ..errors import UNREADABLE, UsageError
from ..store import FileRow, PathFilter
from ..types import ImageRef


@dataclass
class Plan:
    embed: list[str] = field(default_factory=list)  # new, changed, or refused files to try again
    known: set[str] = field(default_factory=set)  # found paths that have a row (an embed there is an update)
    deletes: list[int] = field(default_factory=list)  # rows whose files are gone (or now excluded)
    touches: list[tuple[int, int, int]] = field(default_factory=list)  # (id, nbytes, mtime_ns): same bytes
    unchanged: int = 0
    still_refused: int = 0  # refused before and unchanged since


def plan_update(found: Iterable[ImageRef], rows: dict[str, FileRow], *, retry_skipped: bool,
                same_bytes: Callable[[str, str], bool]) -> Plan:
    """found: the files under the roots now; rows: the stored rows under the same roots, by path
    (rows in folders that could not be listed left out: unknown is not gone). A file with the
    same size and mtime is unchanged; with the same size and `same_bytes(path, sha256)` only its
    timestamp is updated; anything else is embedded, and so is a file refused because it could not
    be read (permissions come back without a new mtime). Rows not found are deleted."""
    plan = Plan()
    left = dict(rows)
    for ref in found:
        row = left.pop(ref.path, None)
        if row is None:
            plan.embed.append(ref.path)
            continue
        plan.known.add(ref.path)
        if row.status == "skipped" and (retry_skipped or (row.error or "").startswith(UNREADABLE)):
            plan.embed.append(ref.path)  # refused for access, not content: a chmod changes no mtime
        elif row.nbytes == ref.nbytes and row.mtime_ns == ref.mtime_ns:
            if row.status == "skipped":
                plan.still_refused += 1
            else:
                plan.unchanged += 1
        elif row.sha256 and row.nbytes == ref.nbytes and same_bytes(ref.path, row.sha256):
            plan.touches.append((row.id, ref.nbytes, ref.mtime_ns))
            plan.unchanged += 1
        else:
            plan.embed.append(ref.path)
    plan.deletes = [r.id for r in left.values()]
    return plan


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

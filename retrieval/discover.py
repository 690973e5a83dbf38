"""Walk folders and list candidate image files. Never decodes anything."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .types import ImageRef, file_kind, shown

log = logging.getLogger(__name__)


def discover(
    roots: Iterable[str | Path],
    *,
    extensions: Iterable[str],
    exclude: Iterable[str | Path] = (),
    include_hidden: bool = False,
    unreadable: list[str] | None = None,
) -> Iterator[ImageRef]:
    """Yield every file under `roots` whose suffix (lower-cased) is in `extensions`.

    Paths are absolute (not symlink-resolved), each reported once even when reachable through
    several links. Hidden files and folders (names starting with '.') are skipped unless asked
    for; folders in `exclude` (e.g. the index itself) are never entered. Symlinked folders are
    followed, with loops cut by remembering (device, inode). Unreadable folders and files are
    logged and skipped, and their paths appended to `unreadable` when given (so a caller can tell
    "could not look" from "gone"). Order: sorted within each folder, so runs are reproducible.
    """
    failed = unreadable if unreadable is not None else []
    exts = {e.lower() for e in extensions}
    excluded = {_key(Path(p)) for p in exclude if Path(p).exists()}
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    for root in roots:
        root = Path(os.path.abspath(root))
        if root.is_file():
            ref = _ref(root, seen_files, failed)
            if ref is not None and root.suffix.lower() in exts:
                yield ref
            continue
        if not root.is_dir():
            log.warning("not a folder or file, skipped: %s", shown(str(root)))
            continue
        yield from _walk(root, exts, excluded, include_hidden, seen_dirs, seen_files, failed)


def _key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _walk(folder: Path, exts: set[str], excluded: set[tuple[int, int]], hidden: bool,
          seen_dirs: set[tuple[int, int]], seen_files: set[tuple[int, int]], failed: list[str]) -> Iterator[ImageRef]:
    try:
        key = _key(folder)
    except OSError as e:
        log.warning("cannot read folder %s (%s), skipped", shown(str(folder)), e.strerror or e)
        failed.append(str(folder))
        return
    if key in seen_dirs or key in excluded:
        return
    seen_dirs.add(key)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        log.warning("cannot list folder %s (%s), skipped", shown(str(folder)), e.strerror or e)
        failed.append(str(folder))
        return
    subdirs = []
    for entry in entries:
        if not hidden and entry.name.startswith("."):
            continue
        path = folder / entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
            is_file = not is_dir and entry.is_file(follow_symlinks=True)
        except OSError:
            continue  # a dangling or unreadable link
        if is_dir:
            subdirs.append(path)
        elif is_file and path.suffix.lower() in exts:
            ref = _ref(path, seen_files, failed)
            if ref is not None:
                yield ref
        elif path.suffix.lower() in exts:
            _special(path)
    for sub in subdirs:
        yield from _walk(sub, exts, excluded, hidden, seen_dirs, seen_files, failed)


def _special(path: Path) -> None:
    """Say why a FIFO, device or socket named like an image is left out (it is never opened: a
    FIFO would wait for a writer). A dangling link names nothing, so it goes unmentioned."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    log.warning("not a regular file (%s), skipped: %s", file_kind(mode), shown(str(path)))


def _ref(path: Path, seen_files: set[tuple[int, int]], failed: list[str]) -> ImageRef | None:
    try:
        st = path.stat()
    except OSError as e:
        log.warning("cannot read %s (%s), skipped", shown(str(path)), e.strerror or e)
        failed.append(str(path))
        return None
    key = (st.st_dev, st.st_ino)
    if key in seen_files:
        return None
    seen_files.add(key)
    return ImageRef.of(str(path), st)

"""File-system helpers of the engine: atomic writes, input expansion, an index folder's files and lock."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import images
from ..errors import RetrievalError
from ..store import writable
from ..types import shown


def atomic_write(out: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write through `write(file)` to a temporary file beside `out`, then os.replace it.

    The result gets ordinary permissions (0666 less the umask), not mkstemp's 0600.
    """
    out = output_file(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def output_file(out: str | Path, option: str | None = None) -> Path:
    """`out` as a file to write; RetrievalError naming it (and the `option` that gave it) when it is
    a folder, which os.replace cannot replace. Commands call it before their work, so a long run
    never ends in this refusal; atomic_write calls it for every file it writes."""
    out = Path(out)
    if out.is_dir():
        named = f"{option} {shown(str(out))}" if option else shown(str(out))
        raise RetrievalError(f"{named} is a folder; pass a file name to write (a new file, or one to replace)")
    return out


def expand_inputs(items: Iterable[str | Path]) -> list[str]:
    """Files as given; folders expanded to the files inside with an image extension (sorted, recursive)."""
    exts = images.IMAGE_EXTENSIONS
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in exts)
        else:
            out.append(str(p))
    return out


@dataclass(frozen=True)
class Roots:
    """The folders (or files) `retrieve index` is given, resolved once: `real` their real paths
    (symlinks resolved, so a folder reached through a link and by its own name is one set of rows),
    `given` their absolute paths as given (rows stored under a link's own name before roots were
    resolved are found by these)."""

    real: tuple[str, ...]
    given: tuple[str, ...]

    @property
    def under(self) -> list[str]:
        """Every folder whose rows the update looks at: the real paths, then the given ones."""
        return list(dict.fromkeys([*self.real, *self.given]))


def stored_names(paths: Iterable[str | Path]) -> list[str]:
    """The names the index may hold each of `paths` under: its real path (as `retrieve index`
    stores a file, links resolved), then as given made absolute (a row stored through a link);
    each once, in order."""
    return list(dict.fromkeys(name for p in paths for name in (os.path.realpath(p), os.path.abspath(p))))


def index_roots(roots: Iterable[str | Path] | Roots, *, missing_ok: bool = False) -> Roots:
    """`roots` resolved (see Roots; already resolved ones as they are); RetrievalError naming the
    first that does not exist (checked before an index folder is created for them), unless
    `missing_ok` (`--prune`: a folder deleted for good, whose rows go)."""
    if isinstance(roots, Roots):
        return roots
    given = [os.path.abspath(r) for r in roots]
    for r in given:
        if not os.path.exists(r) and not missing_ok:
            raise RetrievalError(f"{shown(r)} does not exist; pass a folder of images")
    return Roots(tuple(os.path.realpath(r) for r in given), tuple(given))


STORE_FILE = "store.sqlite"
VECTORS_FILE = "vectors.npz"
EXACT_FILE = "vectors.f32"  # ivfpq: the exact vectors it re-scores with, memory-mapped
LOCK_FILE = "lock"


def backup_target(dest: str | Path) -> Path:
    """The file `retrieve backup DEST` writes: DEST/store.sqlite when DEST is a folder, or is written
    as one (a trailing slash: the folder is created if missing), else DEST itself, whose folder must
    exist. RetrievalError naming the fix when DEST cannot be either."""
    as_folder = isinstance(dest, str) and dest.endswith(("/", os.sep))
    path = Path(dest)
    if as_folder or path.is_dir():
        if path.exists() and not path.is_dir():
            raise RetrievalError(f"{shown(str(dest))} names a folder (it ends in a slash) but {shown(str(path))} is a "
                                 f"file; pass a folder, or the file name without the slash")
        path.mkdir(parents=True, exist_ok=True)
        return path / STORE_FILE
    if path.parent.exists() and not path.parent.is_dir():
        raise RetrievalError(f"{shown(str(path.parent))} is a file, not a folder, so {shown(str(path))} cannot be "
                             f"written; choose another destination")
    if not path.parent.is_dir():
        raise RetrievalError(f"folder {shown(str(path.parent))} does not exist; create it, or end the destination in "
                             f"a slash to back up into a folder created for it ({shown(str(path.parent))}/)")
    return path


def index_folder(path: str | Path, *, create: bool = True) -> Path:
    """An index folder path; RetrievalError when it names an existing file. `create`: the command
    creates the folder if missing (`retrieve index`), which the message then says; the others
    read an index that must exist."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        if create:
            raise RetrievalError(f"index folder {shown(str(path))} is a file", fix="give a folder (created if missing)",
                                 command="--index FOLDER")
        raise RetrievalError(f"index folder {shown(str(path))} is a file", fix="give the folder that indexing made "
                             "(it holds store.sqlite)", command="--index FOLDER")
    return path


def require_writable(folder: Path) -> None:
    """RetrievalError naming the fix when this process may not change the index in `folder`
    (permissions, a read-only mount): refused before anything is written, not half-way."""
    if folder.exists() and not writable(folder / STORE_FILE):
        raise RetrievalError(f"the index at {shown(str(folder))} is read-only here (no write permission on the folder "
                             f"or its {STORE_FILE}, or a read-only mount) and this would change it",
                             fix="make them writable, or copy the folder to writable media and use the copy",
                             command="--index COPY")


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on an index folder (filelock: the same on every OS), so two writers never
    interleave; a second writer is refused at once rather than left waiting."""
    from filelock import FileLock, Timeout

    require_writable(folder)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RetrievalError(f"another `retrieve` is updating {folder}; wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()

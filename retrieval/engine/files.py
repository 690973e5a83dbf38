"""File-system helpers of the engine: atomic writes, input expansion, the default index folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from .. import images


def atomic_write(out: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write through `write(file)` to a temporary file beside `out`, then os.replace it.

    The result gets ordinary permissions (0666 less the umask), not mkstemp's 0600.
    """
    out = Path(out)
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

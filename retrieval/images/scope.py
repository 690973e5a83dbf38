"""Pillow's process-wide settings while decoding: the bomb limit and where its warnings go.

Both are process-wide (`PIL.Image.MAX_IMAGE_PIXELS`, `warnings.showwarning`), so the scopes that
change them share one process-wide record, `_OPEN`: the one piece of module-level mutable state in
the package, unavoidable because what it guards is itself process-wide, and kept in one small
object behind a lock (docs/decisions.md). The first scope to open installs the limit and the
warnings hook; the last to close restores exactly what was there. Each scope entering and leaving
on its own (the earlier design) let concurrent scopes restore each other's settings: every overlap
left a wrapper on `warnings.showwarning`, a chain that grew with a server's uptime.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from PIL import Image

from ..config import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

DECODER_THREADS = "retrieval-decode"  # name prefix of the engine's decoder threads (see pixel_limit)


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Scoped Pillow bomb limit: our own check rejects above `max_pixels`; Pillow only guards far above.

    Safe to enter from any number of threads at once, nested or overlapping in any order: all open
    scopes share one set of settings (see the module docstring). While any is open, Pillow's limit
    is the loosest that an open scope needs (at least `DEFAULT_MAX_PIXELS`), so Pillow never refuses
    a picture that a caller's own budget allows; each decode still checks its own `max_pixels`
    against the header before any pixel is decoded (`decoding._check_header`), whatever is open
    elsewhere. While scopes are open, warnings raised by Pillow, by this module or in decoder
    threads go to the debug log (corrupt EXIF, odd MPO headers: not the user's problem); others pass
    through. When the last closes, only settings still as the scopes left them are restored: one
    changed meanwhile by someone else stays theirs (the hook left behind passes everything on).
    """
    _OPEN.enter(max_pixels)
    try:
        yield
    finally:
        _OPEN.leave(max_pixels)


class _Hook:
    """`warnings.showwarning` while scopes are open: decoder chatter to the debug log, the rest to
    the hook that was there before; transparent once closed (someone may have saved it meanwhile)."""

    def __init__(self, previous: Callable[..., None]) -> None:
        self.previous = previous
        self.active = True

    def __call__(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
        if not (self.active and _decoder_chatter(filename)):
            self.previous(message, category, filename, lineno, file, line)
        elif not issubclass(category, (Image.DecompressionBombWarning, ResourceWarning)):
            log.debug("%s (%s:%d)", message, filename, lineno)


class _OpenScopes:
    """The open pixel_limit scopes of this process: how many need each limit, what the first found
    (to restore) and what they set (to tell our settings from someone else's). All under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: Counter[int] = Counter()
        self._saved_limit: int | None = None
        self._limit = 0  # the limit the scopes last set
        self._hook: _Hook | None = None

    def enter(self, limit: int) -> None:
        """Open a scope that needs `limit` pixels (counted as at least DEFAULT_MAX_PIXELS: leave
        with the same `limit`)."""
        limit = max(limit, DEFAULT_MAX_PIXELS)
        with self._lock:
            if not self._limits:
                self._saved_limit, self._hook = Image.MAX_IMAGE_PIXELS, _Hook(warnings.showwarning)
                warnings.showwarning = self._hook
            self._limits[limit] += 1
            self._limit = Image.MAX_IMAGE_PIXELS = max(self._limits)

    def leave(self, limit: int) -> None:
        limit = max(limit, DEFAULT_MAX_PIXELS)
        with self._lock:
            self._limits[limit] -= 1
            if not self._limits[limit]:
                del self._limits[limit]
            ours = Image.MAX_IMAGE_PIXELS == self._limit
            if self._limits:
                if ours:
                    self._limit = Image.MAX_IMAGE_PIXELS = max(self._limits)
                return
            if ours:
                Image.MAX_IMAGE_PIXELS = self._saved_limit
            assert self._hook is not None
            self._hook.active = False
            if warnings.showwarning is self._hook:
                warnings.showwarning = self._hook.previous
            self._hook = None

    def state(self) -> dict[int, int]:
        """How many open scopes need each limit (for tests and diagnostics)."""
        with self._lock:
            return dict(self._limits)


_OPEN = _OpenScopes()  # process-wide because Pillow's limit and warnings.showwarning are (see above)


def _decoder_chatter(filename: str) -> bool:
    """A warning raised in a decoder thread, by Pillow (or pillow-heif) or by this package."""
    if threading.current_thread().name.startswith(DECODER_THREADS):
        return True
    here = Path(filename).resolve()
    import PIL

    roots = [Path(__file__).resolve().parent, Path(PIL.__file__).resolve().parent]
    with contextlib.suppress(ImportError):
        import pillow_heif

        roots.append(Path(pillow_heif.__file__).resolve().parent)
    return any(root in here.parents for root in roots)


def worker_init(max_pixels: int = DEFAULT_MAX_PIXELS) -> None:  # pragma: no cover - runs in decoder processes
    """Initialiser of decoder processes: the pixel_limit settings for the life of the process
    (a scope opened and never closed: it only decodes), and Ctrl-C left to the parent. It lives
    here, not in the engine, because a spawned worker imports the initialiser's module: from the
    engine that would load torch in every one (seconds each, and far more memory; docs/throughput.md)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, between batches
    _OPEN.enter(max_pixels)

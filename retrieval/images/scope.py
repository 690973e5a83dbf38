"""Pillow's process-wide settings while decoding: the bomb limit and where its warnings go."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import warnings
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

    It changes process-wide state (Pillow's limit, how warnings are shown), so threads that decode
    at once share one scope entered around all of them: the engine holds it around its readers,
    `load_image` around its own decode; the decoding functions never enter it. While it lasts, warnings raised by Pillow, by this module or in decoder threads
    go to the debug log (corrupt EXIF, odd MPO headers: not the user's problem); others pass through.
    On exit it undoes only its own changes, so a scope that outlives others (a stream's, left to
    the garbage collector) cannot reset settings made since.
    """
    undo = _apply(max_pixels)
    try:
        yield
    finally:
        undo()


def _apply(max_pixels: int) -> Callable[[], None]:
    """Set Pillow's limit and the warnings hook; returns what undoes only these changes."""
    previous_limit, previous_show = Image.MAX_IMAGE_PIXELS, warnings.showwarning
    limit = Image.MAX_IMAGE_PIXELS = max(max_pixels, DEFAULT_MAX_PIXELS)
    active = [True]

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if not (active[0] and _decoder_chatter(filename)):  # transparent once the scope is over
            previous_show(message, category, filename, lineno, file, line)
        elif not issubclass(category, (Image.DecompressionBombWarning, ResourceWarning)):
            log.debug("%s (%s:%d)", message, filename, lineno)

    warnings.showwarning = show

    def undo() -> None:
        active[0] = False
        if warnings.showwarning is show:
            warnings.showwarning = previous_show
        if Image.MAX_IMAGE_PIXELS == limit:
            Image.MAX_IMAGE_PIXELS = previous_limit

    return undo


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
    (it only decodes), and Ctrl-C left to the parent. It lives here, not in the engine, because a
    spawned worker imports the initialiser's module: from the engine that would load torch in
    every one (seconds each, and far more memory; docs/throughput.md)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, between batches
    _apply(max_pixels)

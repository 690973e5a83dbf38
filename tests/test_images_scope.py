"""images.pixel_limit from many threads at once: Pillow's limit and the warnings hook are
process-wide, so overlapping scopes share one set of settings, and the last to close restores
exactly what was there (each scope restoring its own left a wrapper on warnings.showwarning behind
every overlap: a chain that grew with a server's uptime)."""

from __future__ import annotations

import logging
import random
import threading
import warnings

from PIL import Image

from retrieval import images
from retrieval.config import DEFAULT_MAX_PIXELS
from retrieval.images import scope


def _settings() -> tuple[object, object]:
    return warnings.showwarning, Image.MAX_IMAGE_PIXELS


def test_many_threads_in_overlapping_scopes_leave_pillows_settings_as_they_were():
    before = _settings()
    limits = [DEFAULT_MAX_PIXELS, 2 * DEFAULT_MAX_PIXELS, 3 * DEFAULT_MAX_PIXELS, 10]
    all_open = threading.Barrier(8)
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            rng = random.Random(i)
            with images.pixel_limit(limits[i % 4]):
                all_open.wait(timeout=30)  # every thread inside at once, then they leave in any order
            for _ in range(300):
                with images.pixel_limit(rng.choice(limits)):
                    assert Image.MAX_IMAGE_PIXELS >= DEFAULT_MAX_PIXELS
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert _settings() == before
    assert scope._OPEN.state() == {}


def test_overlapping_scopes_hold_the_loosest_open_limit_and_the_last_restores():
    """Entered A, B and left A, B (not nested: two threads' scopes in one thread's order). While any
    is open Pillow's limit is the largest an open scope needs, so Pillow never refuses a picture a
    caller's own budget allows; each decode still checks its own budget (decoding._check_header)."""
    before = _settings()
    loose, strict = images.pixel_limit(3 * DEFAULT_MAX_PIXELS), images.pixel_limit(10)
    loose.__enter__()
    hook = warnings.showwarning
    assert Image.MAX_IMAGE_PIXELS == 3 * DEFAULT_MAX_PIXELS
    strict.__enter__()
    assert Image.MAX_IMAGE_PIXELS == 3 * DEFAULT_MAX_PIXELS and warnings.showwarning is hook  # one hook
    loose.__exit__(None, None, None)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS and warnings.showwarning is hook
    strict.__exit__(None, None, None)
    assert _settings() == before


def test_decoder_chatter_is_logged_once_while_other_threads_open_and_close_scopes(caplog):
    before = warnings.showwarning
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with images.pixel_limit(DEFAULT_MAX_PIXELS):
                pass

    def decoder() -> None:
        for k in range(50):
            warnings.warn(f"corrupt EXIF {k}", UserWarning, stacklevel=1)

    with caplog.at_level(logging.DEBUG, logger="retrieval.images"), images.pixel_limit(1000):
        others = [threading.Thread(target=churn) for _ in range(3)]
        for t in others:
            t.start()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            t = threading.Thread(target=decoder, name=f"{images.DECODER_THREADS}_0")
            t.start()
            t.join()
        stop.set()
        for t in others:
            t.join()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"corrupt EXIF {k}" for k in range(50)]
    assert warnings.showwarning is before and scope._OPEN.state() == {}

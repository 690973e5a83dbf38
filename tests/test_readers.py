"""How decoder threads are scheduled: bursts while the caller waits (the model shares the CPU), or
ahead of the caller (the model or the JPEG decoder is on a GPU), and Pillow's process-wide
settings around them."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from retrieval import images
from retrieval.config import ImageConfig
from retrieval.engine import forward
from retrieval.engine.forward import Decoded, decoded_stream

from .conftest import synth_photo


class Recorder:
    """A read function that notes when each file starts and ends, and a scope that notes its use."""

    def __init__(self, n: int) -> None:
        self.started = [threading.Event() for _ in range(n)]
        self.events: list[str] = []
        self.lock = threading.Lock()

    def read(self, path: str) -> str:
        self.started[int(path)].set()
        time.sleep(0.01)
        with self.lock:
            self.events.append(f"done {path}")
        return path

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        self.events.append("enter")
        try:
            yield
        finally:
            self.events.append("exit")


def _reads(rec: Recorder, n: int, *, ahead: bool, window: int = 4):
    return forward._reads([str(i) for i in range(n)], rec.read, processes=0, threads=2, window=window,
                            scope=rec.scope, ahead=ahead)


@pytest.fixture()
def submitted(monkeypatch) -> list[str]:
    """The files handed to reader threads so far (no clock involved: the pool records them)."""
    out: list[str] = []

    class Counting(forward.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            out.append(args[0])
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(forward, "ThreadPoolExecutor", Counting)
    return out


def test_readers_ahead_work_while_the_caller_holds_a_file(submitted):
    rec = Recorder(20)
    reads = _reads(rec, 20, ahead=True)
    i, p, get = next(reads)
    assert (i, p, get()) == (0, "0", "0")
    # the caller has asked for nothing more, yet the files after it are being read ...
    assert rec.started[4].wait(10)
    # ... the one held plus a window of 4, no more: the generator is suspended until asked again
    assert submitted == ["0", "1", "2", "3", "4"]
    assert [(i, get()) for i, _, get in reads] == [(k, str(k)) for k in range(1, 20)]
    assert rec.events.count("enter") == 1 and rec.events[-1] == "exit"


def test_bursts_read_only_while_the_caller_waits(submitted):
    rec = Recorder(20)
    reads = _reads(rec, 20, ahead=False)
    next(reads)
    # one burst, 4 files per thread, read to the end before the first file is handed over
    assert submitted == [str(k) for k in range(8)] and all(rec.started[k].is_set() for k in range(8))
    assert [i for i, _, _ in reads] == list(range(1, 20))
    assert submitted == [str(k) for k in range(20)]


def test_closing_early_stops_the_readers_before_leaving_the_scope():
    rec = Recorder(50)
    reads = _reads(rec, 50, ahead=True, window=8)
    for _ in range(3):
        next(reads)
    reads.close()
    assert rec.events[0] == "enter" and rec.events[-1] == "exit"
    assert all(e.startswith("done") for e in rec.events[1:-1])  # nothing read after the scope ended
    assert len(rec.events) - 2 < 50  # the readers were stopped: close() waits for them, so nothing follows


def test_an_ahead_stream_decodes_like_inline_and_restores_pillow_settings(tiny, tmp_path: Path, monkeypatch):
    class OnGpu:  # the stream only asks the backbone where it runs and its patch size
        device = torch.device("meta")
        patch_size = tiny.patch_size

    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.jpg"))
        synth_photo(i, (320 + 14 * i, 240)).save(paths[-1], quality=90)
    before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters), warnings.showwarning)
    seen_ahead: list[bool] = []
    real = forward._reads
    monkeypatch.setattr(forward, "_reads", lambda *a, **k: seen_ahead.append(k["ahead"]) or real(*a, **k))
    image = ImageConfig(size=112)
    ahead = list(decoded_stream(paths, backbone=OnGpu(), image=image, workers=0))  # type: ignore[arg-type]
    inline = list(decoded_stream(paths, backbone=tiny, image=image, workers=0, threads=False))
    assert seen_ahead[:2] == [True, False]
    stream = decoded_stream(paths, backbone=OnGpu(), image=image, workers=0)  # type: ignore[arg-type]
    next(stream)
    assert Image.MAX_IMAGE_PIXELS != before[0]  # the stream holds its scope between items ...
    stream.close()  # ... and an interrupted one gives it back
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters), warnings.showwarning) == before
    assert [r.path for r in ahead] == [r.path for r in inline] == paths
    for a, b in zip(ahead, inline):
        assert isinstance(a, Decoded) and isinstance(b, Decoded)
        assert torch.equal(a.pixels[0], b.pixels[0]) and a.sha256 == b.sha256


def test_pixel_limit_logs_decoder_chatter_as_it_comes_and_passes_the_rest(caplog):
    before = warnings.showwarning

    def decoder() -> None:
        for k in range(3):
            warnings.warn(f"corrupt EXIF {k}", UserWarning, stacklevel=1)
            assert len(caplog.records) == k + 1  # at once: a scope that spans a stream keeps no list
        warnings.warn("big", Image.DecompressionBombWarning, stacklevel=1)

    with caplog.at_level(logging.DEBUG, logger="retrieval.images"), images.pixel_limit(1000):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            t = threading.Thread(target=decoder, name=f"{images.DECODER_THREADS}_0")
            t.start()
            t.join()
        with pytest.warns(UserWarning, match="main thread"):  # not decoding: a warning like any other
            warnings.warn("main thread", UserWarning, stacklevel=1)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"corrupt EXIF {k}" for k in range(3)]
    assert warnings.showwarning is before


def test_pixel_limit_undoes_only_its_own_changes():
    import PIL

    seen: list[object] = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda *a, **k: seen.append(a[0])
        scope = images.pixel_limit(10**9)
        scope.__enter__()
        hook = warnings.showwarning
        other = warnings.showwarning = lambda *a, **k: None  # someone else's, made while the scope lasts
        scope.__exit__(None, None, None)  # the scope ends first (a stream closed late by the collector)
        assert warnings.showwarning is other
        hook("late", UserWarning, PIL.__file__, 1)  # their restore may put it back: it is transparent now
        assert seen == ["late"]
    before = Image.MAX_IMAGE_PIXELS
    with images.pixel_limit(10**9):
        Image.MAX_IMAGE_PIXELS = 5
    assert Image.MAX_IMAGE_PIXELS == 5
    Image.MAX_IMAGE_PIXELS = before

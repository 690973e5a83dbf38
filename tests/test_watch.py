"""`retrieve index DIR --watch` (engine/watch.py): file events batched into the same update as a
normal run; batches and commits are counted, never seconds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from retrieval.cli import app
from retrieval.engine import Index
from retrieval.engine.watch import Events, WatchOptions, due, watch
from retrieval.errors import RetrievalError

from .conftest import ROOT, synth_photo
from .helpers import index_tiny, make_photos, one_line_error, runner

FAST = WatchOptions(settle=0.3, longest=5.0, rescan=0, retry=0.2)


def _event(kind: str, src: str, dest: str = "", is_directory: bool = False) -> SimpleNamespace:
    return SimpleNamespace(event_type=kind, src_path=src, dest_path=dest, is_directory=is_directory)


# --- when a batch runs (pure) ---------------------------------------------------------------------
def test_a_batch_waits_for_events_to_settle_but_not_longer_than_longest():
    o = WatchOptions(settle=2, longest=30, rescan=600)
    assert due((0, 0, 0), now=5, last_run=0, options=o) is None
    assert due((3, 10, 11), now=12, last_run=0, options=o) is None  # still coming
    assert due((3, 10, 11), now=13, last_run=0, options=o) == "events"  # quiet for 2 s
    assert due((900, 10, 39.5), now=40, last_run=0, options=o) == "events"  # a copy that never pauses
    assert due((0, 0, 0), now=601, last_run=0, options=o) == "rescan"
    assert due((0, 0, 0), now=601, last_run=0, options=WatchOptions(rescan=0)) is None
    assert due((0, 0, 0), now=5, last_run=0, options=o, slept=True) == "woke"


def test_options_refuse_negative_or_endless_seconds():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(RetrievalError, match="rescan"):
            WatchOptions(rescan=bad)


def test_only_changes_to_images_and_folders_outside_the_index_count(tmp_path):
    events = Events([tmp_path / "ix"], clock=lambda: 1.0)
    for e in (_event("opened", "/p/a.jpg"), _event("closed_no_write", "/p/a.jpg"), _event("modified", "/p/notes.txt"),
              _event("created", str(tmp_path / "ix" / "store.sqlite-wal")), _event("modified", str(tmp_path / "ix"),
                                                                                  is_directory=True)):
        events.dispatch(e)
    assert events.pending()[0] == 0 and not events.wake.is_set()
    for e in (_event("created", "/p/a.JPG"), _event("moved", "/p/a.tmp", "/p/b.jpg"), _event("deleted", "/p/sub",
                                                                                             is_directory=True),
              _event("closed", "/p/c.png"), _event("attrib", "/p/c.png")):
        events.dispatch(e)
    assert events.pending() == (5, 1.0, 1.0) and events.wake.is_set()
    assert events.take() == 5 and events.pending()[0] == 0


# --- the loop, with a fake observer ---------------------------------------------------------------
class FakeObserver:
    def __init__(self) -> None:
        self.handlers: list = []
        self.stopped = False

    def schedule(self, handler, path, recursive):  # noqa: ANN001, ANN201
        self.handlers.append((handler, path, recursive))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def join(self) -> None:
        pass


def _summary(**kw):  # noqa: ANN003, ANN202
    from retrieval.engine import UpdateSummary

    return UpdateSummary(**kw)


def test_a_failed_batch_keeps_its_events_and_is_tried_again(tmp_path):
    """Another writer holding the index (or a drive not mounted) fails a batch: its events wait."""
    obs, batches, calls = FakeObserver(), [], []

    def update():  # noqa: ANN202
        calls.append(1)
        if len(calls) == 1:
            raise RetrievalError("another `retrieve` is updating ix; wait for it to finish")
        return _summary(added=1)

    stop = threading.Event()
    t = threading.Thread(target=watch, args=(update, [str(tmp_path)]),
                         kwargs={"options": FAST, "should_stop": stop.is_set, "on_batch": batches.append, "observer": obs,
                                 "tick": 0.02})
    t.start()
    try:
        _until(lambda: obs.handlers)
        obs.handlers[0][0].dispatch(_event("created", str(tmp_path / "a.jpg")))
        _until(lambda: len(batches) >= 2)
    finally:
        stop.set()
        t.join(30)
    assert [(b.reason, b.events, b.error is not None) for b in batches] == [("events", 1, True), ("events", 1, False)]
    assert obs.stopped and obs.handlers[0][1:] == (str(tmp_path), True)


def test_a_batch_that_keeps_failing_is_tried_less_and_less_often(tmp_path):
    """An unmounted drive fails every batch: the wait doubles (0.05, 0.1, 0.2, 0.4 s...), so the
    warnings thin out instead of coming every `retry` seconds."""
    obs, tries = FakeObserver(), []

    def update():  # noqa: ANN202
        tries.append(time.monotonic())
        raise RetrievalError("photos holds no image files now (a drive not mounted?)")

    stop = threading.Event()
    t = threading.Thread(target=watch, args=(update, [str(tmp_path)]),
                         kwargs={"options": WatchOptions(settle=0.01, rescan=0, retry=0.05), "observer": obs,
                                 "should_stop": stop.is_set, "tick": 0.01})
    t.start()
    try:
        _until(lambda: obs.handlers)
        obs.handlers[0][0].dispatch(_event("deleted", str(tmp_path / "a.jpg")))
        _until(lambda: len(tries) >= 5)
        gaps = [b - a for a, b in zip(tries, tries[1:])]
    finally:
        stop.set()
        t.join(30)
    assert gaps[-1] > 3 * gaps[0], gaps  # 8 times as long; the same wait each time without the doubling


def test_a_rescan_and_a_wake_from_sleep_run_a_batch_without_events(tmp_path):
    obs, reasons = FakeObserver(), []
    wall = [1000.0]

    def update():  # noqa: ANN202
        return _summary()

    def on_batch(b) -> None:  # noqa: ANN001
        reasons.append(b.reason)
        if b.reason == "rescan":
            wall[0] += 3600  # the machine slept an hour: the wall clock jumps, the monotonic one does not

    n = watch(update, [str(tmp_path)], options=WatchOptions(settle=0.1, rescan=0.2), observer=obs,
              should_stop=lambda: len(reasons) >= 2, on_batch=on_batch, wall=lambda: wall[0], tick=0.02)
    assert n == 2 and reasons == ["rescan", "woke"]


# --- the engine, with watchdog and the tiny model -------------------------------------------------
def _until(cond, timeout: float = 120.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _between_batches(ix: Path, photos: Path):  # noqa: ANN202
    """Another writer's update of `photos` once the watch is between batches (it holds the lock
    only during one): tried again while a batch holds it, and never if the watch held it always."""
    for _ in range(100):
        try:
            with Index.open(ix) as other:
                return other.update([photos])
        except RetrievalError as e:
            assert "another `retrieve` is updating" in str(e)
            time.sleep(0.1)
    raise AssertionError("the watch held the index's lock for 10 s")


class Watching:
    """`watch` over an index in a thread, with the batches it ran and a stop signal."""

    def __init__(self, ix: Path, photos: Path) -> None:
        self.ix, self.photos = ix, photos
        self.batches: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with Index.open(self.ix) as idx:  # SQLite's connection belongs to the thread that opened it
            watch(lambda: idx.update([self.photos]), [str(self.photos)], ignore=[self.ix], options=FAST,
                  should_stop=self.stop.is_set, on_batch=self.batches.append, tick=0.05)

    def __enter__(self) -> Watching:
        self.thread.start()
        time.sleep(0.5)  # the observer is watching once `watch` has scheduled it
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def paths(self) -> set[str]:
        with Index.open(self.ix) as fresh:
            return {Path(r.path).name for r in fresh.store.rows() if r.status == "ok"}


def test_creation_change_deletion_and_move_are_each_applied(tmp_path):
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    make_photos(photos, range(3))
    index_tiny(photos, ix)
    with Watching(ix, photos) as w:
        synth_photo(50, (160, 120)).save(photos / "new.jpg")
        _until(lambda: "new.jpg" in w.paths())
        assert _between_batches(ix, photos).unchanged == 4  # another writer gets the lock between batches
        synth_photo(51, (160, 120)).save(photos / "photo_000.jpg")
        _until(lambda: any(b.summary and b.summary.updated for b in w.batches))
        os.remove(photos / "photo_001.jpg")
        _until(lambda: "photo_001.jpg" not in w.paths())
        (photos / "sub").mkdir()
        os.rename(photos / "photo_002.jpg", photos / "sub" / "moved.jpg")
        _until(lambda: "moved.jpg" in w.paths())
    done = [b.summary for b in w.batches if b.summary]
    assert sum(s.added for s in done) == 1 and sum(s.updated for s in done) == 1
    assert sum(s.removed for s in done) == 1 and sum(s.moved for s in done) == 1
    assert w.paths() == {"new.jpg", "photo_000.jpg", "moved.jpg"} and not w.thread.is_alive()


def test_a_burst_of_copied_files_is_a_few_batches_not_one_per_file(tmp_path):
    n = 40
    photos, ix, source = tmp_path / "photos", tmp_path / "ix", tmp_path / "source"
    make_photos(photos, range(1))
    make_photos(source, range(100, 100 + n))
    index_tiny(photos, ix)
    with Index.open(ix) as idx:
        before = idx.store.generation
    with Watching(ix, photos) as w:
        (photos / "burst").mkdir()
        for f in sorted(source.iterdir()):  # a copy that takes a while: events keep coming, never 0.3 s apart
            shutil.copy(f, photos / "burst" / f.name)
            time.sleep(0.02)
        _until(lambda: len(w.paths()) == n + 1)
    with Index.open(ix) as idx:
        commits = idx.store.generation - before
    assert 1 <= len(w.batches) <= 3, [(b.reason, b.events) for b in w.batches]
    assert sum(b.events for b in w.batches) >= n  # every file's events were answered by those batches
    assert commits < n, commits  # one transaction per forward batch (of 4 here) and the deletes/moves


# --- the command ----------------------------------------------------------------------------------
def test_bad_watch_options_are_one_line_errors(folder, tmp_path):
    one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "ix"), "--watch",
                                       "--rescan-interval", "-5"]), "rescan", "seconds")
    assert not (tmp_path / "ix").exists()
    one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "ix"), "--watch",
                                       "--ray", "local"]), "--watch with --ray")


@pytest.mark.subprocess
def test_retrieve_index_watch_applies_a_new_file_and_stops_cleanly_on_ctrl_c(tmp_path):
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    make_photos(photos, range(2))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}
    child = subprocess.Popen([sys.executable, "-m", "retrieval", "index", str(photos), "--index", str(ix), "--model",
                              "test_tiny", "--size", "112", "--workers", "0", "--watch"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(child.stdout.readline, "")), daemon=True)
        reader.start()
        _until(lambda: any("added 2" in x for x in lines), timeout=240)
        time.sleep(1.0)  # the observer starts after the first summary is printed
        synth_photo(60, (160, 120)).save(photos / "late.jpg")
        _until(lambda: any("3 images indexed | added 1" in x for x in lines), timeout=120)
        child.send_signal(signal.SIGINT)
        assert child.wait(60) == 0
        reader.join(10)
    finally:
        if child.poll() is None:
            child.kill()
    assert lines[-1].strip() == "stopped watching", lines
    assert "watching" in child.stderr.read()

"""`retrieve index DIR --watch`: file-system events batched into the same update as a normal run.

    summary = idx.update(roots)                       # the first pass
    watch(lambda: idx.update(roots, should_stop=stop), roots, ignore=[idx.path],
          options=WatchOptions(), should_stop=stop, on_batch=print)

watchdog (a maintained cross-platform file-event library: inotify, FSEvents, ReadDirectoryChangesW)
reports creations, changes, deletions and moves under the roots. Events only say *that* something
changed: a batch runs once no event came for `settle` seconds, or `longest` seconds after the
first event it holds (a copy that never pauses), and is `update()`, the same plan, embed and
commit as a normal run (moves included), holding the index's lock for that batch only, so a
burst of 10,000 copied files is a few batches, each committing one transaction per forward batch.
Events can be lost (an inotify queue overflow, a network share, a machine asleep): a whole update
also runs every `rescan` seconds and when the wall clock jumps ahead of the monotonic one (the
machine slept), and an update finds whatever the events missed, as a normal run does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RetrievalError, UsageError

if TYPE_CHECKING:  # the CLI imports WatchOptions at start-up: nothing heavy here until a watch starts
    from .index import UpdateSummary

log = logging.getLogger(__name__)

RETRY_MOST = 600.0  # seconds between tries of a batch that keeps failing (the wait doubles up to this)
SLEPT = 30.0  # seconds the wall clock may run ahead of the monotonic one before it counts as a sleep
# what changes a file or a folder; opened / closed-without-writing are reads (our own hashing among them)
CHANGES = frozenset({"created", "modified", "deleted", "moved", "closed", "attrib"})


@dataclass(frozen=True)
class WatchOptions:
    settle: float = 2.0  # a batch runs once no event came for this many seconds...
    longest: float = 30.0  # ...or this many seconds after the first event it holds
    rescan: float = 600.0  # a whole update at least this often, events or not (0: never): lost events
    retry: float = 10.0  # seconds before a failed batch is tried again (another writer, a drive not mounted),
    # doubled each time it fails again, up to RETRY_MOST

    def __post_init__(self) -> None:
        for name in ("settle", "longest", "rescan", "retry"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise UsageError(f"watch {name} {value!r}: give a number of seconds, 0 or more")


@dataclass(frozen=True)
class Batch:
    """One update while watching: why it ran, how many events it answered, and its summary, or
    the error that stopped it (it is tried again after WatchOptions.retry)."""

    reason: str  # "events", "rescan" or "woke" (the machine slept)
    events: int
    summary: UpdateSummary | None = None
    error: RetrievalError | None = None


class Events:
    """The events waiting for a batch, fed by watchdog's thread (`dispatch`), read by the loop."""

    def __init__(self, ignore: Sequence[str | Path], clock: Callable[[], float]) -> None:
        from .. import images
        from ..store import PathFilter

        self._extensions = images.IMAGE_EXTENSIONS
        self._ignore = PathFilter([os.path.realpath(p) for p in ignore])
        self._clock = clock
        self._lock = threading.Lock()
        self._count, self._first, self._last = 0, 0.0, 0.0
        self.wake = threading.Event()

    def dispatch(self, event: Any) -> None:
        """watchdog's handler interface: count an event that may change what an update finds."""
        if event.event_type not in CHANGES:
            return
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        if not any(self._relevant(p, event.is_directory) for p in paths):
            return
        now = self._clock()
        with self._lock:
            if not self._count:
                self._first = now
            self._count, self._last = self._count + 1, now
        self.wake.set()

    def _relevant(self, path: str, is_directory: bool) -> bool:
        """A folder (a moved or deleted folder says nothing of its files) or an image file, outside
        the ignored folders."""
        return (is_directory or os.path.splitext(path)[1].lower() in self._extensions) and path not in self._ignore

    def pending(self) -> tuple[int, float, float]:
        """(events waiting, time of the first, time of the last)."""
        with self._lock:
            return self._count, self._first, self._last

    def take(self) -> int:
        """The number of events waiting, now answered by a batch."""
        with self._lock:
            n, self._count = self._count, 0
            return n

    def put_back(self, n: int) -> None:
        """Events a failed batch did not answer: they wait for the next."""
        if n:
            now = self._clock()
            with self._lock:
                self._first = now if not self._count else self._first
                self._count, self._last = self._count + n, now


def due(pending: tuple[int, float, float], *, now: float, last_run: float, options: WatchOptions,
        slept: bool = False) -> str | None:
    """Why a batch should run now, or None: events that settled (or waited `longest`), a rescan
    that is due, or a machine that woke from sleep."""
    count, first, last = pending
    if count and (now - last >= options.settle or now - first >= options.longest):
        return "events"
    if slept:
        return "woke"
    if options.rescan and now - last_run >= options.rescan:
        return "rescan"
    return None


def watch(update: Callable[[], UpdateSummary], roots: Sequence[str], *, ignore: Sequence[str | Path] = (),
          options: WatchOptions = WatchOptions(), should_stop: Callable[[], bool],
          on_batch: Callable[[Batch], None] = lambda b: None, observer: Any = None,
          clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
          tick: float = 0.2) -> int:
    """Run `update()` whenever the files under `roots` (real paths) changed, until `should_stop()`
    (checked every `tick` seconds, and by `update` itself between forward batches); returns the
    number of batches run. Events under `ignore` (the index folder) are not changes. `observer`:
    a watchdog observer (default: the platform's own)."""
    events = Events(ignore, clock)
    if observer is None:
        from watchdog.observers import Observer

        observer = Observer()
    try:
        for root in roots:
            observer.schedule(events, root, recursive=True)
        observer.start()
    except OSError as e:
        raise RetrievalError(f"cannot watch {roots[0] if roots else ''}: {e.strerror or e}; fix: raise the limit on "
                             f"watched folders (Linux: sysctl fs.inotify.max_user_watches=524288), or index "
                             f"without --watch from a timer") from None
    try:
        return _loop(update, events, options, should_stop, on_batch, clock, wall, tick)
    finally:
        observer.stop()
        observer.join()


def _loop(update: Callable[[], UpdateSummary], events: Events, options: WatchOptions,
          should_stop: Callable[[], bool], on_batch: Callable[[Batch], None], clock: Callable[[], float],
          wall: Callable[[], float], tick: float) -> int:
    batches, last_run, not_before, failed = 0, clock(), 0.0, 0
    seen = (clock(), wall())
    while not should_stop():
        events.wake.wait(tick)
        events.wake.clear()
        now, now_wall = clock(), wall()
        slept = (now_wall - seen[1]) - (now - seen[0]) > SLEPT
        seen = (now, now_wall)
        reason = None if now < not_before else due(events.pending(), now=now, last_run=last_run, options=options,
                                                   slept=slept)
        if reason is None or should_stop():
            continue
        answered = events.take()
        try:
            batch, failed = Batch(reason, answered, summary=update()), 0
        except RetrievalError as e:
            events.put_back(answered)
            not_before = clock() + min(options.retry * 2 ** failed, max(options.retry, RETRY_MOST))
            batch, failed = Batch(reason, answered, error=e), failed + 1
        batches, last_run = batches + 1, clock()
        log.debug("watch batch %d (%s, %d events): %s", batches, reason, answered, batch.summary or batch.error)
        on_batch(batch)
        if batch.summary is not None and batch.summary.interrupted:
            break
    return batches


__all__ = ["Batch", "Events", "WatchOptions", "due", "watch"]

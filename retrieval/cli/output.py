"""What the commands print: one-line errors, text that is never markup, tables on stdout (one line
a row, no padding, when piped), and progress (a bar on a terminal, plain lines in a log file)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from ..errors import RetrievalError
from ..types import shown

PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def error_line(message: str) -> None:
    """`error: message` on stderr, one line; the paths in it are text (see literal)."""
    Console(stderr=True).print(Text.assemble(("error:", "red"), " ", literal(message)), soft_wrap=True)


def say_skipped(skipped: Iterable[tuple[str, str]]) -> None:
    """A warning for each file refused, `skipped PATH: reason; fix: ...` (index, --watch, extract)."""
    for path, reason in skipped:
        logging.getLogger("retrieval").warning("skipped %s: %s", shown(path), reason)


def nothing_under(where: Path, paths: Iterable[Path], *, what: str = "") -> RetrievalError:
    """The refusal of `retrieve list PATH` and `retrieve remove PATH` when nothing (`what`: refused,
    indexed) in the index at `where` is at or under the paths."""
    return RetrievalError(f"nothing {what + ' ' if what else ''}in the index at {shown(str(where))} is at or under "
                          f"{', '.join(shown(str(p)) for p in paths)}; `retrieve list` shows what is indexed")


def literal(text: str) -> Text:
    """What rich prints exactly as written: never markup (`a[/b]c.jpg`) nor emoji codes
    (`:smile:.jpg`), with odd bytes and control characters escaped (types.shown). Every path or
    file name the CLI prints through rich goes through here."""
    return Text(shown(text))


def stdout() -> Console:
    """Tables on stdout: folded to the terminal, never cut; one line per row when piped."""
    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


def print_table(table: Table) -> None:
    """A table on stdout; when piped, each row's line without the spaces rich pads it with (a
    reader splitting on whitespace, or `diff`, sees only the values)."""
    console = stdout()
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    sys.stdout.flush()


class _Progress(Progress):
    """Rich's bar on a terminal. Elsewhere (a log file, cron, nohup) Rich draws nothing, so every
    `every` seconds, and once when a task ends, one plain line `progress: indexing 1200/300000
    (0.4%), 35.2 img/s, ETA 2:21:31` goes to stderr instead."""

    def __init__(self, *columns: Any, every: float, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._every = every
        self._said: dict[TaskID, float] = {}
        self._ended: set[TaskID] = set()

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id: TaskID) -> None:
        if self.console.is_terminal or task_id in self._ended:
            return
        task, now = self._tasks[task_id], time.monotonic()
        last = self._said.setdefault(task_id, now)  # the first report starts the clock
        if not task.total or not task.completed or (now - last < self._every and not task.finished):
            return
        self._said[task_id] = now
        if task.finished:
            self._ended.add(task_id)
        parts = [f"progress: {task.description} {task.completed:.0f}/{task.total:.0f} "
                 f"({100 * task.completed / task.total:.1f}%)", rate(task), eta(task)]
        self.console.print(", ".join(p for p in parts if p), markup=False, highlight=False, soft_wrap=True)


class _Column(ProgressColumn):
    def __init__(self, text: Callable[[Task], str]) -> None:
        super().__init__()
        self._text = text

    def render(self, task: Task) -> Text:
        return Text(self._text(task))


def progress_bar() -> Progress:
    """A progress display on stderr (see _Progress); PROGRESS_EVERY is read at each call."""
    stderr = Console(stderr=True)
    return _Progress(  # no live display off a terminal: it would only leave a blank line behind
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Column(rate), _Column(eta),
        console=stderr, transient=True, every=PROGRESS_EVERY, disable=not stderr.is_terminal,
    )


def rate(task: Task) -> str:
    """Images per second since the task began: the average, not the last burst's (a batch that
    lands at once would read as tens of thousands per second); blank for the first second."""
    elapsed = task.elapsed or 0.0
    return f"{task.completed / elapsed:.1f} img/s" if elapsed >= 1.0 and task.completed else ""


def eta(task: Task) -> str:
    """Time left at the average rate so far (Rich's own estimate follows the last bursts, which
    read far too short while the first batches land together); blank until there is a rate."""
    elapsed = task.elapsed or 0.0
    if elapsed < 1.0 or not task.completed or task.total is None:
        return ""
    left = max(task.total - task.completed, 0) * elapsed / task.completed
    return f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"

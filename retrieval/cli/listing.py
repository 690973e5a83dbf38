"""`retrieve list`: what an index holds, file by file, streamed (a million rows are never all in memory)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import engine
from ..types import shown
from .app import app, boundary
from .options import IndexDir, index_dir
from .output import nothing_under

LINES_AT_ONCE = 1000  # lines written to stdout in one call
ID_WIDTH = 7  # the id column's width in the table (longer ids widen their own line only)


@app.command("list")
@boundary
def list_(
    paths: Annotated[list[Path] | None, typer.Argument(help="Only files at or under these folders or files.",
                                                       show_default=False)] = None,
    index: IndexDir = None,
    skipped: Annotated[bool, typer.Option("--skipped", help="Refused files and why, instead of the indexed "
                                                            "ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines: one object a line, {id, path, size, "
                                                         "indexed} (--skipped: and reason).")] = False,
) -> None:
    """What an index holds, by path: id, size, when it was indexed, path (ids are what `retrieve query
    --like` and the server take). Streamed: the first lines come at once, however large the index."""
    where = index_dir(index)
    with engine.Index.open(where) as idx:
        rows = idx.files(paths or None, skipped=skipped)
        lines = (_json_line(r, skipped=skipped) for r in rows) if as_json else _table(rows, skipped=skipped)
        written = _write(lines)
    if written == 0 and paths:
        raise nothing_under(where, paths, what="refused" if skipped else "indexed")


def _write(lines: Iterable[str]) -> int:
    """Write the lines to stdout LINES_AT_ONCE at a time; how many rows there were (the table's
    heading not counted)."""
    n, batch = 0, []
    for line in lines:
        batch.append(line)
        n += 1
        if len(batch) == LINES_AT_ONCE:
            sys.stdout.write("".join(batch))
            batch.clear()
    sys.stdout.write("".join(batch))
    sys.stdout.flush()
    return n


def _table(rows: Iterable[Any], *, skipped: bool) -> Iterator[str]:
    """A heading (before the first row, none without rows), then one line a row, columns of fixed
    width so that nothing waits for the widest: id, size, indexed (local time), path (: reason)."""
    first, times = True, _LocalTimes()
    for r in rows:
        if first:
            first = False
            heading = f"{'id':>{ID_WIDTH}}  {'size':>8}  {'indexed':19}  path" + (": reason" if skipped else "")
            yield heading + "\n"
        reason = f": {shown(r.error or '')}" if skipped else ""
        yield f"{r.id:>{ID_WIDTH}}  {_size(r.nbytes):>8}  {times(r.indexed_ns):19}  {_shown(r.path)}{reason}\n"


class _LocalTimes:
    """ns -> 'YYYY-MM-DD HH:MM:SS' in local time ('-' for None), the last second remembered: the
    rows of one batch were indexed in the same second, and formatting a time costs more than a row."""

    def __init__(self) -> None:
        self._last: tuple[int, str] | None = None

    def __call__(self, ns: int | None) -> str:
        if ns is None:
            return "-"
        second = ns // 1_000_000_000
        if self._last is None or self._last[0] != second:
            self._last = (second, datetime.fromtimestamp(second).strftime("%Y-%m-%d %H:%M:%S"))
        return self._last[1]


def _shown(path: str) -> str:
    """types.shown, without its character-by-character walk for the common printable path (which
    holds no control character, line break nor surrogate escape, so shown leaves it as it is)."""
    return path if path.isprintable() else shown(path)


def _json_line(r: Any, *, skipped: bool) -> str:
    """One row as JSON: path as `retrieve query --json` gives it (bytes that are not UTF-8 as
    \\udcNN escapes), size in bytes, indexed in UTC (ISO 8601; null: indexed before this was kept)."""
    when = None if r.indexed_ns is None else \
        datetime.fromtimestamp(r.indexed_ns / 1e9, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    data = {"id": r.id, "path": r.path, "size": r.nbytes, "indexed": when, **({"reason": r.error} if skipped else {})}
    return json.dumps(data) + "\n"


def _size(n: int) -> str:
    """Bytes in decimal units, three significant figures: 999 B, 12.3 kB, 4.56 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n / scale < 1000 else f"{n / scale:.0f} {unit}"
    return f"{n} B"

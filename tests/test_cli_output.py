"""What the CLI prints: file names as they are (odd bytes, markup, line breaks), progress in a log
file, rates and ETAs, unwrapped log lines, a warning's level once, output cut short by the reader."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.cli import app

from .conftest import ROOT, synth_photo
from .helpers import index_tiny, one_line_error, query_index, runner

BAD_NAME = os.fsdecode(b"bad\xff\xfe.jpg")  # not UTF-8: Linux file names are bytes


def test_non_utf8_file_name_is_indexed_losslessly(folder, tmp_path):
    shutil.copy(folder / "p2.jpg", folder / BAD_NAME)
    ix = tmp_path / "ix"
    r = index_tiny(folder, ix)
    assert "6 images indexed" in r.stdout and "skipped 0" in r.stdout
    assert "unchanged 6" in index_tiny(folder, ix).stdout  # and every later run goes on
    js = json.loads(query_index(ix, str(folder / "p2.jpg"), "--json", "-k", "6").stdout)
    assert str(folder / BAD_NAME) in [h["path"] for h in js]  # JSON escapes the bytes; they come back exact
    raw = query_index(ix, str(folder / "p2.jpg"), "--paths", "-k", "6").stdout_bytes
    assert os.fsencode(folder / BAD_NAME) in raw.split(b"\n")  # the file system's own bytes, for scripts
    table = query_index(ix, str(folder / BAD_NAME), "-k", "2")
    assert table.exit_code == 0 and "bad\\xff\\xfe.jpg" in table.stdout  # readable, never a crash
    gone = runner.invoke(app, ["remove", str(folder / BAD_NAME), "--index", str(ix)])
    assert gone.exit_code == 0 and "removed 1" in gone.stdout


def test_odd_file_names_print_as_they_are(folder, tmp_path):
    """Names are text, never rich markup or emoji codes; tabs and line breaks are shown escaped,
    as odd bytes are, so each result stays one line that names its file."""
    odd = [folder / "a[" / "b]c.jpg", folder / "[bold]*?.jpg", folder / ":smile:.jpg", folder / "tab\there.jpg",
           folder / "line\nbreak.jpg", folder / "esc\x1b[31mred.jpg"]
    for i, p in enumerate(odd):
        p.parent.mkdir(exist_ok=True)
        synth_photo(20 + i).save(p, quality=90)
    ix = tmp_path / "ix"
    index_tiny(folder, ix)

    def written(p: Path) -> str:
        return str(p).replace("\t", "\\t").replace("\n", "\\n").replace("\x1b", "\\x1b")

    for p in odd:
        r = query_index(ix, str(p), "-k", "11")
        assert r.exit_code == 0, r.output
        rows = r.stdout.splitlines()[1:]
        assert len(rows) == 11 and rows[0].split()[-1] == written(p)
        assert sorted(row.split(maxsplit=2)[2].strip() for row in rows) == \
            sorted([written(q) for q in odd] + [str(folder / f"p{i}.jpg") for i in range(5)])
    both = query_index(ix, str(odd[0]), str(odd[1]), "-k", "1")
    assert [x for x in both.stdout.splitlines() if x.startswith("query ")] == [f"query {odd[0]}", f"query {odd[1]}"]
    one_line_error(query_index(ix, str(folder / ":smile:x[/b].jpg")), ":smile:x[/b].jpg")
    maps = query_index(ix, str(odd[2]), "-k", "1", "--out", str(tmp_path / "maps[/i]"))
    assert maps.exit_code == 0 and f"maps: {tmp_path / 'maps[/i]' / 'index.html'}" in maps.stderr
    assert runner.invoke(app, ["remove", str(odd[1]), "--index", str(ix)]).exit_code == 0
    info = runner.invoke(app, ["info", "--index", str(ix)]).stdout
    assert f"`retrieve index '{odd[1]}'` takes it back" in info  # a command that works when pasted
    gt = folder / "mine [b] :smile:.json"
    gt.write_text(json.dumps({"database": [f"p{i}.jpg" for i in range(5)],
                              "queries": [{"image": "p0.jpg", "positives": ["p0.jpg"]}]}))
    r = runner.invoke(app, ["eval", str(gt), "--model", "test_tiny", "--size", "112", "--workers", "0"],
                      env={"RETRIEVAL_INDEX": str(tmp_path / "default")})
    assert r.exit_code == 0 and r.stdout.startswith("mine [b] :smile:: 1 queries, 5 images"), r.output


def test_log_lines_are_never_wrapped_when_piped(folder, tmp_path):
    (folder / ("x" * 120 + ".jpg")).write_bytes(b"")
    r = index_tiny(folder, tmp_path / "ix")
    lines = [line for line in r.stderr.splitlines() if "x" * 120 in line]
    assert len(lines) == 1 and lines[0].startswith("warning: skipped ") and "empty file" in lines[0]


def test_rate_is_an_average_not_a_burst():
    from rich.progress import Progress

    from retrieval.cli import rate

    with Progress(disable=True) as bar:
        task = bar.add_task("x", total=100)
        bar.advance(task, 50)  # a whole batch lands at once, right after the start
        assert rate(bar.tasks[0]) == ""


def test_a_long_job_reports_progress_when_stderr_is_not_a_terminal(folder, tmp_path, monkeypatch):
    """In a log file Rich draws no bar: plain `progress:` lines (count, share, rate, ETA) stand in
    for it, every PROGRESS_EVERY seconds (0 here: every batch) and once at the end."""
    from retrieval.cli import output

    monkeypatch.setattr(output, "PROGRESS_EVERY", 0.0)
    said = index_tiny(folder, tmp_path / "ix", "--batch", "2").stderr.splitlines()
    assert "" not in said  # no blank line where a bar would have been
    lines = [x for x in said if x.startswith("progress:")]
    assert lines and lines[-1].startswith("progress: indexing 5/5 (100.0%)"), lines
    assert all(re.fullmatch(r"progress: indexing \d/5 \(\d+\.\d%\)(, [\d.]+ img/s, ETA \d+:\d\d:\d\d)?", x)
               for x in lines), lines
    assert sum("5/5" in x for x in lines) == 1  # the end is said once
    monkeypatch.setattr(output, "PROGRESS_EVERY", 3600.0)
    (folder / "p9.jpg").write_bytes((folder / "p0.jpg").read_bytes()[:-1] + b"x")
    lines = [x for x in index_tiny(folder, tmp_path / "ix").stderr.splitlines() if x.startswith("progress:")]
    assert lines == [lines[-1]] and lines[0].startswith("progress: indexing 1/1 (100.0%)")  # only the end


def test_eta_is_at_the_average_rate():
    from rich.progress import Progress

    from retrieval.cli.output import eta

    with Progress(disable=True) as bar:
        task = bar.add_task("x", total=1000)
        bar.update(task, completed=100)
        t = bar.tasks[0]
        assert eta(t) == ""  # no rate yet
        t.start_time -= 10.0  # 100 done in 10 s: 900 left take 90 s
        assert eta(t) == "ETA 0:01:30"
        t.start_time -= 3590.0  # 100 in an hour: 9 hours left
        assert eta(t) == "ETA 9:00:00"


@pytest.mark.subprocess
@pytest.mark.parametrize("args", [["models"], ["--help"], ["index", "-h"], ["-h"]])
def test_output_cut_short_by_the_reader_ends_quietly(args):
    """`retrieve ... | head`, `retrieve models | true`: the reader has gone when the output comes
    (its end of the pipe is closed before the process starts); no error line, no traceback at
    exit, and SIGPIPE's status (141) as shell tools give, for every command and for help."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "retrieval", *args], stdout=write, stderr=subprocess.PIPE,
                           cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert (r.returncode, r.stderr) == (141, b""), (args, r.stderr[-2000:])


def test_on_a_terminal_a_warning_shows_its_level_once(monkeypatch):
    """rich draws the level itself: the message it is given is the message alone (logging's
    basicConfig would otherwise format it as `WARNING:logger:message`)."""
    import logging

    cli_app = importlib.import_module("retrieval.cli.app")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        cli_app.main(verbose=False, version=False)
        handler = root.handlers[0]
        record = logging.LogRecord("retrieval.x", logging.WARNING, __file__, 1, "random weights", None, None)
        assert type(handler).__name__ == "RichHandler" and handler.format(record) == "random weights"
    finally:
        root.handlers[:] = saved
        root.setLevel(level)

"""How `retrieve index` tells a file it has seen from one that changed (issue 27, item 2): odd
file times never fail a batch."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from retrieval.types import INT64_MAX

from .conftest import synth_photo
from .helpers import TINY_ARGS, error_lines, run

Y2999 = 32503680000  # 2999-01-01T00:00:00Z in seconds: past int64 nanoseconds (2262-04-11)
Y1920 = -1577923200  # 1920-01-01


def bmps(folder: Path, n: int) -> list[Path]:
    """n photos as BMP files (one size for every file: a copy keeps the size, as in the issue)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"b{i:02d}.bmp"
        synth_photo(i, (160, 120)).save(p)
        out.append(p)
    return out


def rows(index: Path) -> dict[str, tuple]:
    with sqlite3.connect(index / "store.sqlite") as conn:
        return {Path(p).name: rest for p, *rest in
                conn.execute("SELECT path, status, sha256, mtime_ns, ctime_ns, inode FROM images")}


def summary(r) -> str:
    return next(line for line in r.stdout.splitlines() if "images indexed" in line)


def test_a_file_dated_after_2262_is_indexed_once_and_then_unchanged(tmp_path):
    """`touch -d 2999-01-01 f.bmp` made every run end in `unexpected OverflowError ... SQLite
    INTEGER`, its batch rolled back and redone each time."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    late, old, _ = bmps(photos, 3)
    os.utime(late, (Y2999, Y2999))
    os.utime(old, (Y1920, Y1920))
    if os.stat(late).st_mtime_ns <= INT64_MAX:
        pytest.skip(f"this file system keeps no time past 2262 (it stored {os.stat(late).st_mtime}): nothing to test")
    first = run("index", str(photos), "--index", str(index), *TINY_ARGS)
    assert first.exit_code == 0 and error_lines(first) == [], first.output
    assert "added 3," in summary(first)
    second = run("index", str(photos), "--index", str(index))
    assert second.exit_code == 0 and error_lines(second) == [], second.output
    assert "added 0, updated 0, removed 0, unchanged 3" in summary(second)
    stored = rows(index)
    assert len(stored) == 3 and stored["b00.bmp"][0] == "ok" and stored["b00.bmp"][2] == INT64_MAX
    assert stored["b01.bmp"][2] == os.stat(old).st_mtime_ns < 0  # before 1970: stored as it is

"""How `retrieve index` tells a file it has seen from one that changed (issue 27, items 2 and 4):
odd file times never fail a batch, and a copy whose size and mtime match the old file's is
still noticed (ctime, inode; `--verify` re-hashes everything)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from retrieval.backbone import model as backbone_model
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


def test_a_copy_with_the_old_mtime_restored_is_embedded_again(tmp_path):
    """`cp b01.bmp b00.bmp; touch -d <old mtime> b00.bmp` left size and mtime as they were: the
    run said `unchanged`, and queries returned b00.bmp for b01's picture."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    files = bmps(photos, 4)
    assert run("index", str(photos), "--index", str(index), *TINY_ARGS).exit_code == 0
    before = os.stat(files[0])
    shutil.copyfile(files[1], files[0])  # in place, as cp does: the same inode
    os.utime(files[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(files[0]).st_size, os.stat(files[0]).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    r = run("index", str(photos), "--index", str(index))
    assert r.exit_code == 0, r.output
    assert "added 0, updated 1, removed 0, unchanged 3" in summary(r)
    stored = rows(index)
    assert stored["b00.bmp"][1] == stored["b01.bmp"][1]  # b00 now holds b01's bytes, and its descriptor
    q = run("query", str(files[1]), "--index", str(index), "--json", "-k", "2")
    assert q.exit_code == 0, q.output
    hits = json.loads(q.stdout)
    assert {Path(h["path"]).name for h in hits} == {"b00.bmp", "b01.bmp"}
    assert hits[0]["score"] == pytest.approx(hits[1]["score"], abs=1e-5)


def test_a_new_ctime_or_inode_with_the_same_bytes_costs_no_model_work(tmp_path, monkeypatch):
    """chmod changes the ctime, a restore (or an editor's atomic save) the inode: the file is
    hashed once, its stat updated, and the model never loaded."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    files = bmps(photos, 3)
    assert run("index", str(photos), "--index", str(index), *TINY_ARGS).exit_code == 0
    was = rows(index)
    os.chmod(files[0], 0o600)
    st = os.stat(files[1])
    shutil.copy2(files[1], photos / "tmp.part")  # a restore: same bytes and mtime, a new inode
    os.replace(photos / "tmp.part", files[1])
    assert os.stat(files[1]).st_ino != st.st_ino and os.stat(files[1]).st_mtime_ns == st.st_mtime_ns
    monkeypatch.setattr(backbone_model, "load_backbone", lambda *a, **k: pytest.fail("the model was loaded"))
    r = run("index", str(photos), "--index", str(index))
    assert r.exit_code == 0 and "added 0, updated 0, removed 0, unchanged 3" in summary(r), r.output
    now = rows(index)
    assert now["b00.bmp"][3] != was["b00.bmp"][3] and now["b01.bmp"][4] == os.stat(files[1]).st_ino
    again = run("index", str(photos), "--index", str(index))
    assert "unchanged 3" in summary(again) and rows(index) == now  # recorded: not hashed again


def test_verify_rehashes_every_file_and_catches_what_a_migrated_row_missed(tmp_path):
    """A store from schema 2 (no ctime or inode) whose b00 was replaced by a copy of b01 with its
    mtime restored: the upgrade records ctime and inode without reading the files, so only
    `retrieve index --verify` finds the change, re-embeds that file alone and says so."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    files = bmps(photos, 4)
    assert run("index", str(photos), "--index", str(index), *TINY_ARGS).exit_code == 0
    with sqlite3.connect(index / "store.sqlite") as conn:  # back to schema 2, as an older retrieval left it
        conn.execute("ALTER TABLE images DROP COLUMN ctime_ns")
        conn.execute("ALTER TABLE images DROP COLUMN inode")
        conn.execute("PRAGMA user_version = 2")
    before = os.stat(files[0])
    shutil.copyfile(files[1], files[0])
    os.utime(files[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    upgraded = run("index", str(photos), "--index", str(index))
    assert upgraded.exit_code == 0 and "unchanged 4" in summary(upgraded), upgraded.output
    assert all(r[3] is not None and r[4] is not None for r in rows(index).values())  # recorded
    assert rows(index)["b00.bmp"][1] != rows(index)["b01.bmp"][1]
    verified = run("index", str(photos), "--index", str(index), "--verify")
    assert verified.exit_code == 0, verified.output
    assert "added 0, updated 1, removed 0, unchanged 3" in summary(verified)
    assert "verified: 4 files hashed, 1 changed since they were indexed" in verified.stdout
    assert "progress: hashing 4/4 (100.0%)" in verified.stderr  # a long verify shows how far it is
    assert rows(index)["b00.bmp"][1] == rows(index)["b01.bmp"][1]
    calm = run("index", str(photos), "--index", str(index), "--verify")
    assert "verified: 4 files hashed, 0 changed" in calm.stdout and "unchanged 4" in summary(calm)


def test_a_file_that_cannot_be_hashed_does_not_end_the_run(tmp_path, monkeypatch):
    """More files are hashed now (every ctime change): one that cannot be read at that moment
    (permissions, I/O) goes to the reader like a changed file, which refuses it or embeds it."""
    from retrieval.backbone import weights

    photos, index = tmp_path / "photos", tmp_path / "index"
    files = bmps(photos, 2)
    assert run("index", str(photos), "--index", str(index), *TINY_ARGS).exit_code == 0
    os.chmod(files[0], 0o600)

    def unreadable(path, *a, **k):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(weights, "file_sha256", unreadable)
    r = run("index", str(photos), "--index", str(index))
    assert r.exit_code == 0 and "updated 1, removed 0, unchanged 1" in summary(r), r.output

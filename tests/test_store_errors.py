"""Store failures reach the user as one line through the CLI: a corrupt store, a full disk."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from retrieval.store import connection as store_mod
from retrieval.engine import atomic_write
from retrieval.engine import derived as derived_mod
from retrieval.errors import DiskFullError, StoreCorruptError

from .helpers import TINY_ARGS, clean_exit, corrupt, count_rows, error_lines, index_with_full_disk, make_photos, run




















# --- a corrupt store ----------------------------------------------------------------------------
def test_corrupt_store_is_one_line_for_every_command(built, index):
    photos, _ = built
    store = index / "store.sqlite"
    corrupt(store)
    for args in (["info"], ["query", str(photos / "photo_001.jpg")], ["remove", str(photos / "photo_002.jpg")]):
        r = run(*args, "--index", str(index))
        assert r.exit_code == 1 and clean_exit(r), (args, r.output, r.exception)
        assert "Traceback" not in r.output
        lines = error_lines(r)
        assert len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith("error: ") and str(store) in lines[0] and "is damaged" in lines[0]
        assert "restore a backup" in lines[0] and lines[0].endswith(f"(`retrieve check --index {index}`)")


def test_error_line_keeps_brackets_in_paths(built, tmp_path):
    index = Path(shutil.copytree(built[1], tmp_path / "index [old]"))
    corrupt(index / "store.sqlite")
    r = run("info", "--index", str(index))
    assert r.exit_code == 1 and f"{index}/store.sqlite is damaged" in r.stderr  # not eaten as rich markup


def test_not_a_database_at_all(index):
    store = index / "store.sqlite"
    store.write_bytes(np.random.default_rng(1).bytes(8192))
    r = run("info", "--index", str(index))
    assert r.exit_code == 1 and clean_exit(r), r.output
    lines = error_lines(r)
    assert len(lines) == 1 and f"{store} is damaged (file is not a database)" in lines[0]


def test_damaged_vectors_file_is_rebuilt(built, index):
    """A vectors file whose zip and header are intact but whose FAISS bytes are not: rebuilt from
    the store, not a traceback."""
    photos, _ = built
    vectors = index / "vectors.npz"
    q = ["query", str(photos / "photo_003.jpg"), "--index", str(index), "--json", "-k", "3"]
    want = json.loads(run(*q).stdout)
    with np.load(vectors) as z:
        meta = str(z["meta"])
    buf = io.BytesIO()
    np.savez(buf, faiss=np.frombuffer(b"\x00garbage" * 8, np.uint8), meta=np.array(meta))
    vectors.write_bytes(buf.getvalue())
    again = run(*q)
    assert again.exit_code == 0 and clean_exit(again), again.output
    assert json.loads(again.stdout) == want




def _assert_disk_full_line(r, index: Path) -> None:
    assert r.exit_code == 1 and clean_exit(r), (r.output, r.exception)
    assert "Traceback" not in r.output
    lines = error_lines(r)
    assert len(lines) == 1, r.stderr
    assert lines[0] == (f"error: the disk holding {index} is full (database or disk is full); nothing committed "
                        f"was lost: free some space and run the same command again")


def test_disk_full_on_commit_is_one_line_and_the_rerun_finishes(tmp_path, monkeypatch):
    r, photos, index = index_with_full_disk(tmp_path, monkeypatch)
    _assert_disk_full_line(r, index)
    assert count_rows(index / "store.sqlite") == 4  # the first batch (--batch 4) was committed and kept
    again = run("index", str(photos), "--index", str(index), *TINY_ARGS)
    assert again.exit_code == 0, again.output
    assert "10 images indexed | added 6," in again.stdout  # the 4 committed before were not redone


def test_sqlite_full_from_sqlite_itself(tmp_path, monkeypatch):
    """A real SQLITE_FULL (max_page_count caps the file), raised by SQLite wherever it happens."""
    photos = tmp_path / "photos"
    make_photos(photos, range(4))
    index = tmp_path / "index"
    assert run("index", str(photos), "--index", str(index), *TINY_ARGS).exit_code == 0
    with sqlite3.connect(index / "store.sqlite") as conn:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    make_photos(photos, range(4, 16))
    connect = sqlite3.connect

    def capped(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        return conn

    monkeypatch.setattr(sqlite3, "connect", capped)
    r = run("index", str(photos), "--index", str(index), *TINY_ARGS)
    _assert_disk_full_line(r, index)
    assert isinstance(r.exception, SystemExit)
    monkeypatch.undo()
    assert count_rows(index / "store.sqlite") >= 4
    again = run("index", str(photos), "--index", str(index), *TINY_ARGS)
    assert again.exit_code == 0 and "16 images indexed" in again.stdout, again.output


def test_store_error_by_message_and_bugs_stay_bugs():
    full = sqlite3.OperationalError("database or disk is full")
    assert isinstance(store_mod.store_error(full, Path("/x/store.sqlite")), DiskFullError)
    bad = sqlite3.DatabaseError("database disk image is malformed")
    err = store_mod.store_error(bad, Path("/x/store.sqlite"))
    assert isinstance(err, StoreCorruptError) and str(err).startswith("/x/store.sqlite is damaged")
    assert store_mod.store_error(sqlite3.IntegrityError("UNIQUE constraint failed: images.path"),
                                 Path("/x/store.sqlite")) is None  # bugs stay bugs


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """None when mounted, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    return None if p.returncode == 0 else f"cannot mount a tmpfs here: {p.stderr.strip() or p.returncode}"


@pytest.mark.subprocess
def test_disk_full_on_a_real_small_disk(tmp_path):
    """The issue's case: a 400 KB tmpfs as the index folder. The injected tests above cover the
    same behaviour where mounting is not allowed."""
    disk = tmp_path / "disk"
    why = _mount_tmpfs(disk, "400k")
    if why is not None:
        pytest.skip(why + " (test_disk_full_on_commit_* covers the behaviour)")
    try:
        photos = tmp_path / "photos"
        make_photos(photos, range(48))
        index = disk / "index"
        r = run("index", str(photos), "--index", str(index), *TINY_ARGS)
        _assert_disk_full_line(r, index)
        kept = count_rows(index / "store.sqlite")
        assert 0 < kept < 48
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        again = run("index", str(photos), "--index", str(index), *TINY_ARGS)
        assert again.exit_code == 0, again.output
        assert f"48 images indexed | added {48 - kept}," in again.stdout
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_atomic_write_leaves_no_temp_file_when_the_disk_fills(tmp_path):
    def fill(f):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "vectors.npz", fill)
    assert list(tmp_path.iterdir()) == []


def test_vectors_not_saved_for_lack_of_space_is_a_warning(built, index, monkeypatch):
    photos, _ = built
    (index / "vectors.npz").unlink()

    def no_space(out, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(derived_mod, "atomic_write", no_space)
    r = run("query", str(photos / "photo_005.jpg"), "--index", str(index), "--json", "-k", "2")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["path"] == str(photos / "photo_005.jpg")
    assert any(f"the disk holding {index} is full" in x and "rebuilt next time" in x for x in r.stderr.splitlines())
    assert not (index / "vectors.npz").exists()

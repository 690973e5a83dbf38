"""An index on read-only media (a mounted backup, a read-only share, another user's files): every
reading command reads it, every writing one is refused in one line, and nothing in it is written.

The commands run in a child process that file permissions bind: as root (which ignores them)
without CAP_DAC_OVERRIDE, through capsh, so SQLite and os.access meet a real read-only folder."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .helpers import count_rows

pytestmark = pytest.mark.subprocess

# `retrieve` run in-process by typer's runner, several commands per child: one result each
_CHILD = """
import json, sys
from typer.testing import CliRunner
from retrieval.cli import app
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args, env={"COLUMNS": "100000"})
    bug = r.exception is not None and not isinstance(r.exception, SystemExit)
    out.append({"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "bug": repr(r.exception) if bug else None})
print(json.dumps(out))
"""


def _read_only(folder: Path) -> None:
    for p in [folder, *folder.iterdir()]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _errors(result: dict) -> list[str]:
    return [x for x in result["stderr"].splitlines() if x.strip() and "random weights" not in x]


@pytest.fixture()
def as_reader(tmp_path):
    """`as_reader([args], ...)`: the results of `retrieve args` in a process that may not write
    what is read-only; skipped only where the OS offers no such process."""
    wrap: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("capsh") is None:
            pytest.skip("running as root, which ignores file permissions, and capsh (to drop that) is missing")
        wrap = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$@"', "retrieve"]
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    denied = subprocess.run([*wrap, sys.executable, "-c", "import sys; open(sys.argv[1] + '/x', 'w')", str(probe)],
                            capture_output=True, text=True)
    if denied.returncode == 0 or "PermissionError" not in denied.stderr:
        pytest.skip(f"cannot make a process that file permissions bind here: {denied.stderr.strip()[-200:]}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*commands: list[str]) -> list[dict]:
        p = subprocess.run([*wrap, sys.executable, "-c", _CHILD, json.dumps(commands)], capture_output=True,
                           text=True, env=env, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        results = json.loads(p.stdout)
        assert all(r["bug"] is None for r in results), results
        return results

    yield run
    for p in tmp_path.rglob("*"):  # pytest may remove it as a user that permissions bind
        if p.is_dir():
            p.chmod(0o755)


def test_read_only_index_is_queried_inspected_checked_and_backed_up(built, index, tmp_path, as_reader):
    photos, _ = built
    backups = tmp_path / "backups"
    backups.mkdir()
    _read_only(index)
    before = _state(index)
    query, info, check, backup = as_reader(
        ["query", str(photos / "photo_005.jpg"), "--index", str(index), "--json", "-k", "2"],
        ["info", "--index", str(index), "--json"],
        ["check", "--index", str(index)],
        ["backup", str(backups), "--index", str(index)])
    for r in (query, info, check, backup):
        assert r["code"] == 0 and _errors(r) == [], r
    assert json.loads(query["stdout"])[0]["path"] == str(photos / "photo_005.jpg")
    assert json.loads(info["stdout"])["images"] == 12
    assert check["stdout"].splitlines()[-1] == f"{index}: healthy, 12 images indexed, 0 skipped"
    assert count_rows(backups / "store.sqlite") == 12
    assert _state(index) == before  # nothing written, created or left beside the store


def test_stale_vectors_of_a_read_only_index_are_rebuilt_in_memory(built, index, as_reader):
    photos, _ = built
    (index / "vectors.npz").unlink()
    _read_only(index)
    before = _state(index)
    (r,) = as_reader(["query", str(photos / "photo_003.jpg"), "--index", str(index), "--json", "-k", "1"])
    assert r["code"] == 0, r
    assert json.loads(r["stdout"])[0]["path"] == str(photos / "photo_003.jpg")
    warning, = _errors(r)
    assert warning.startswith(f"warning: {index} is read-only: the vector index was rebuilt in memory"), warning
    assert _state(index) == before


def test_stale_ivfpq_vectors_of_a_read_only_index_are_one_line(built, tmp_path, as_reader):
    """ivfpq keeps its exact vectors in a memory-mapped file: not rebuilt in memory, the fix named."""
    from .helpers import TINY_ARGS, run

    photos, _ = built
    index = tmp_path / "ivfpq"
    assert run("index", str(photos), "--index", str(index), *TINY_ARGS, "--index-kind", "ivfpq").exit_code == 0
    for f in ("vectors.npz", "vectors.f32"):
        (index / f).unlink()
    _read_only(index)
    before = _state(index)
    (r,) = as_reader(["query", str(photos / "photo_003.jpg"), "--index", str(index)])
    line, = _errors(r)
    assert r["code"] == 1 and line == (f"error: the ivfpq vector index of {index} must be rebuilt and the folder is "
                                       f"read-only; open the index once where it is writable (any `retrieve query` "
                                       f"rebuilds it), or use a writable copy"), r
    assert _state(index) == before


def test_writing_commands_on_a_read_only_index_are_one_line(built, index, tmp_path, as_reader):
    photos, _ = built
    old = Path(shutil.copytree(index, tmp_path / "old"))
    with sqlite3.connect(old / "store.sqlite") as conn:  # an index from before schema 2, migrated on open
        conn.execute("PRAGMA user_version = 1")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (index, old, empty):
        _read_only(folder)
    before = [_state(f) for f in (index, old, empty)]
    add, remove, new, info_old, check_old = as_reader(
        ["index", str(photos), "--index", str(index), "--model", "test_tiny", "--size", "112", "--workers", "0"],
        ["remove", str(photos / "photo_001.jpg"), "--index", str(index)],
        ["index", str(photos), "--index", str(empty), "--model", "test_tiny", "--size", "112", "--workers", "0"],
        ["info", "--index", str(old)],
        ["check", "--index", str(old)])
    for r, folder in ((add, index), (remove, index), (new, empty)):
        line, = _errors(r)
        assert r["code"] == 1 and line.startswith(f"error: the index at {folder} is read-only here"), r
        assert "copy the folder to writable media" in line
    line, = _errors(info_old)
    assert info_old["code"] == 1 and "schema version 1 and must be migrated" in line, info_old
    assert f"fix: open it once where it is writable, or use a copy (`retrieve info --index {old}`)" in line
    assert check_old["code"] == 0 and "uses schema version 1; it is migrated" in check_old["stdout"], check_old
    assert [_state(f) for f in (index, old, empty)] == before
    assert count_rows(index / "store.sqlite") == 12


def test_read_only_store_with_committed_rows_in_its_wal(built, index, tmp_path, as_reader):
    """A copy of a live index: its -wal holds a committed delete. With the -shm file SQLite reads
    it (mode=ro); without one, immutable would read the store without that change: refused."""
    live = sqlite3.connect(index / "store.sqlite", isolation_level=None)
    try:
        live.execute("PRAGMA wal_autocheckpoint = 0")
        live.execute("DELETE FROM images WHERE id = (SELECT max(id) FROM images)")
        full = Path(shutil.copytree(index, tmp_path / "full"))
        no_shm = Path(shutil.copytree(index, tmp_path / "no_shm"))
    finally:
        live.close()
    (no_shm / "store.sqlite-shm").unlink()
    assert (no_shm / "store.sqlite-wal").stat().st_size > 0
    for folder in (full, no_shm):
        _read_only(folder)
    read, refused = as_reader(["info", "--index", str(full), "--json"], ["info", "--index", str(no_shm)])
    assert read["code"] == 0 and json.loads(read["stdout"])["images"] == 11, read
    line, = _errors(refused)
    assert refused["code"] == 1 and line.startswith(f"error: cannot read {no_shm}/store.sqlite where it is"), refused
    assert "store.sqlite-wal" in line and "copy the index folder" in line


def test_read_only_index_queried_with_its_weights_file_moved(tmp_path, as_reader, vits_state_dict):
    """A mounted copy used on another machine: its weights file is elsewhere, so its hash is not
    among those the index remembers (a write it must skip when read-only, not fail on)."""
    import torch

    from .helpers import make_folder, run

    ckpt = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(vits_state_dict(), ckpt)
    photos, index = tmp_path / "photos", tmp_path / "index"
    make_folder(photos, range(3))
    r = run("index", str(photos), "--index", str(index), "--weights", str(ckpt), "--size", "112", "--workers", "0")
    assert r.exit_code == 0, r.output
    moved = ckpt.rename(tmp_path / "elsewhere.pth")
    _read_only(index)
    before = _state(index)
    (q,) = as_reader(["query", str(photos / "img_001.png"), "--index", str(index), "--weights", str(moved),
                      "--json", "-k", "1"])
    assert q["code"] == 0 and _errors(q) == [], q
    assert json.loads(q["stdout"])[0]["path"] == str(photos / "img_001.png")
    assert _state(index) == before

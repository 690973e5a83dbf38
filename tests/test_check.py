"""`retrieve check` and `retrieve backup` through the CLI."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from retrieval import vectors as vindex
from retrieval.store import Store


from .helpers import clean_exit, corrupt, count_rows, error_lines, index_with_full_disk, run


def test_new_commands_have_help():
    for name in ("check", "backup"):
        r = run(name, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


def test_check_reports_a_corrupt_store(index):
    store = index / "store.sqlite"
    # bytes into the meta table's page (page 2) that leave it readable but wrong: where they land
    # depends on the stored config's length (6000, not 5000, since the key batch_size became batch)
    corrupt(store, offset=6000)
    r = run("check", "--index", str(index))
    assert r.exit_code == 1 and clean_exit(r) and "Traceback" not in r.output
    findings = r.stdout.splitlines()
    assert findings and all(line.split()[0] in ("ok", "note", "error") for line in findings)
    assert any(line.startswith("error") and "integrity_check" in line and str(store) in line for line in findings)
    lines = error_lines(r)
    assert len(lines) == 1 and str(store) in lines[0] and "is damaged" in lines[0]
    data = json.loads(run("check", "--index", str(index), "--json").stdout)
    assert data["healthy"] is False and data["store"] == str(store)
    assert any(f["level"] == "error" for f in data["findings"])


def test_check_without_an_index(tmp_path):
    r = run("check", "--index", str(tmp_path / "nothing"))
    assert r.exit_code == 1 and clean_exit(r) and len(error_lines(r)) == 1 and "no index at" in r.stderr


def test_check_and_backup_on_a_file_that_is_not_a_database(index):
    store = index / "store.sqlite"
    store.write_bytes(np.random.default_rng(1).bytes(8192))
    r = run("check", "--index", str(index))
    assert r.exit_code == 1 and clean_exit(r)
    assert any(x.startswith("error") and "SQLite cannot read it (file is not a database)" in x
               for x in r.stdout.splitlines()), r.stdout
    r = run("backup", str(index.parent / "copy.sqlite"), "--index", str(index))
    assert r.exit_code == 1 and clean_exit(r) and f"{store} is damaged" in r.stderr
    assert not (index.parent / "copy.sqlite").exists()


def test_check_healthy_index(index):
    r = run("check", "--index", str(index))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[-1] == f"{index}: healthy, 12 images indexed, 0 skipped"
    assert all(line.startswith("ok ") for line in lines[:-1]), lines
    assert any("integrity_check found no problems" in x for x in lines)
    assert any("12 indexed rows have 256-byte descriptors" in x for x in lines)  # test_tiny: 2 x 32 float32
    assert any("vectors.npz matches the store: 12 vectors" in x for x in lines)
    data = json.loads(run("check", "--index", str(index), "--json").stdout)
    assert data["healthy"] is True and data["images"] == 12 and data["skipped"] == 0


def test_a_run_stopped_by_a_full_disk_leaves_a_healthy_index(tmp_path, monkeypatch):
    r, _, index = index_with_full_disk(tmp_path, monkeypatch)
    assert r.exit_code == 1
    assert count_rows(index / "store.sqlite") == 4
    r = run("check", "--index", str(index))
    assert r.exit_code == 0, r.output  # the batch in flight left nothing half-written
    assert r.stdout.splitlines()[-1].startswith(f"{index}: healthy, 4 images indexed")


def test_check_finds_broken_rows(built, index):
    photos, _ = built
    store = index / "store.sqlite"
    with sqlite3.connect(store) as conn:
        a, pa = conn.execute("SELECT id, path FROM images ORDER BY id LIMIT 1").fetchone()
        b, pb = conn.execute("SELECT id, path FROM images WHERE local_feats IS NOT NULL AND id != ? LIMIT 1",
                             [a]).fetchone()
        conn.execute("UPDATE images SET descriptor = substr(descriptor, 1, 100) WHERE id = ?", [a])
        conn.execute("UPDATE images SET local_feats = substr(local_feats, 1, 64) WHERE id = ?", [b])
    r = run("check", "--index", str(index))
    assert r.exit_code == 1 and clean_exit(r), r.output
    errors = [x for x in r.stdout.splitlines() if x.startswith("error")]
    assert len(errors) == 2, r.stdout
    assert "1 indexed row has a descriptor of the wrong size (expected 256 bytes" in errors[0] and pa in errors[0]
    assert "do not fit their grid" in errors[1] and pb in errors[1] and pa not in errors[1]
    assert "retrieve remove" in errors[0]
    assert "integrity_check found no problems" in r.stdout  # SQLite itself is fine: the damage is ours to see
    lines = error_lines(r)
    assert len(lines) == 1 and str(store) in lines[0] and "2 problems" in lines[0]


def test_check_finds_a_damaged_whitening(index):
    store = index / "store.sqlite"
    with sqlite3.connect(store) as conn:
        state = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'whitening'").fetchone()[0])
        state["data"] = base64.b64encode(b"not an npz").decode()
        conn.execute("UPDATE meta SET value = ? WHERE key = 'whitening'", [json.dumps(state)])
    r = run("check", "--index", str(index))
    assert r.exit_code == 1
    assert any(x.startswith("error") and "whitening cannot be read" in x and "--refit-whitening" in x
               for x in r.stdout.splitlines()), r.stdout


def test_vectors_file_stale_or_unreadable_is_a_note(built, index):
    photos, _ = built
    vectors = index / "vectors.npz"
    vectors.unlink()
    r = run("check", "--index", str(index))
    assert r.exit_code == 0 and any(x.startswith("note") and "does not exist" in x for x in r.stdout.splitlines())
    assert "(1 note)" in r.stdout.splitlines()[-1]
    q = run("query", str(photos / "photo_003.jpg"), "--index", str(index), "--json", "-k", "1")  # rebuilds it
    assert q.exit_code == 0 and vectors.is_file()
    # a file whose zip and header are intact but whose FAISS bytes are not: rebuilt, not a traceback
    with np.load(vectors) as z:
        meta = str(z["meta"])
    buf = io.BytesIO()
    np.savez(buf, faiss=np.frombuffer(b"\x00garbage" * 8, np.uint8), meta=np.array(meta))
    vectors.write_bytes(buf.getvalue())
    r = run("check", "--index", str(index))
    assert r.exit_code == 0 and any(x.startswith("note") and "damaged" in x for x in r.stdout.splitlines()), r.stdout
    again = run("query", str(photos / "photo_003.jpg"), "--index", str(index), "--json", "-k", "1")
    assert again.exit_code == 0 and json.loads(again.stdout) == json.loads(q.stdout)
    assert run("check", "--index", str(index)).exit_code == 0


def test_vectors_file_that_lies_about_its_version_is_an_error(index):
    vectors = index / "vectors.npz"
    with np.load(vectors) as z:
        meta = json.loads(str(z["meta"]))
    xb = np.eye(meta["ntotal"], meta["dim"], dtype=np.float32)
    lying = vindex.build(xb, np.arange(meta["ntotal"]) + 1000, kind="flat", fingerprint=meta["fingerprint"],
                         data_version=meta["generation"])
    vectors.write_bytes(vindex.to_bytes(lying))
    r = run("check", "--index", str(index))
    assert r.exit_code == 1
    assert any(x.startswith("error") and "ids differ" in x and f"delete {vectors}" in x for x in r.stdout.splitlines())


# --- backup and restore -------------------------------------------------------------------------
def test_backup_then_restore_gives_the_same_results(built, index, tmp_path):
    photos, _ = built
    dest = tmp_path / "backups"
    dest.mkdir()
    r = run("backup", str(dest), "--index", str(index))
    assert r.exit_code == 0, r.output
    copy = dest / "store.sqlite"
    assert r.stdout.startswith(f"wrote {copy}: 12 images indexed")
    assert sorted(p.name for p in dest.iterdir()) == ["store.sqlite"]  # no temp or journal files left
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(copy, restored / "store.sqlite")
    assert run("check", "--index", str(restored)).exit_code == 0
    q = ["query", str(photos / "photo_007.jpg"), "--json", "-k", "5"]
    want = json.loads(run(*q, "--index", str(index)).stdout)
    got = run(*q, "--index", str(restored))
    assert got.exit_code == 0 and json.loads(got.stdout) == want
    assert (restored / "vectors.npz").is_file()  # derived again from the restored store


def test_backup_while_a_writer_holds_a_transaction(index, tmp_path):
    """The online backup is a committed snapshot: a writer's open transaction neither blocks it
    nor leaks into it."""
    writer = sqlite3.connect(index / "store.sqlite", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO images(path, status) VALUES ('/uncommitted.jpg', 'skipped')")
        r = run("backup", str(tmp_path / "b.sqlite"), "--index", str(index))
        assert r.exit_code == 0, r.output
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with Store(tmp_path / "b.sqlite") as copy:
        assert copy.count() == 12 and copy.count("ok") == 12


def test_backup_refuses_a_damaged_store_and_keeps_the_old_backup(index, tmp_path):
    old = tmp_path / "b.sqlite"
    assert run("backup", str(old), "--index", str(index)).exit_code == 0
    before = old.read_bytes()
    corrupt(index / "store.sqlite")
    r = run("backup", str(old), "--index", str(index))
    assert r.exit_code == 1 and clean_exit(r)
    lines = error_lines(r)
    assert len(lines) == 1 and "integrity check" in lines[0] and f"{old} was left as it was" in lines[0]
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.sqlite", "index"]


def test_backup_refuses_its_own_store_and_live_databases(index, tmp_path):
    r = run("backup", str(index), "--index", str(index))
    assert r.exit_code == 1 and "the index's own store" in r.stderr
    live = tmp_path / "live.sqlite"
    live.write_bytes(b"")
    Path(str(live) + "-wal").write_bytes(b"")
    r = run("backup", str(live), "--index", str(index))
    assert r.exit_code == 1 and "live database" in r.stderr
    r = run("backup", str(tmp_path / "no" / "such" / "b.sqlite"), "--index", str(index))
    assert r.exit_code == 1 and "does not exist" in r.stderr


def test_damaged_ivfpq_exact_file_is_an_error_and_check_leaves_it_as_it_is(built, tmp_path):
    """`check` verifies every block checksum of vectors.f32; it reports, never rebuilds."""
    from .helpers import TINY_ARGS

    ix = tmp_path / "pq"
    assert run("index", str(built[0]), "--index", str(ix), "--index-kind", "ivfpq", *TINY_ARGS).exit_code == 0
    exact = ix / "vectors.f32"
    data = bytearray(exact.read_bytes())
    data[-4:] = np.float32(0.5).tobytes()  # one value of the last row
    exact.write_bytes(bytes(data))
    r = run("check", "--index", str(ix), "--json")
    assert r.exit_code == 1 and clean_exit(r)
    report = json.loads(r.stdout)
    errors = [f["message"] for f in report["findings"] if f["level"] == "error"]
    assert report["healthy"] is False and len(errors) == 1 and str(exact) in errors[0]
    assert "1 of its 1 blocks fail their checksum" in errors[0]
    assert exact.read_bytes() == bytes(data)

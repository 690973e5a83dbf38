"""Moved and renamed files keep their rows, ids and descriptors: no model work (issue 24, "Keep current")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.engine import Index
from retrieval.engine.files import VECTORS_FILE
from retrieval.engine.plan import plan_update
from retrieval.store import FileRow, Move, Store, Upsert
from retrieval.types import ImageRef

from .helpers import index_tiny, make_photos, query_index


# --- the plan (pure: hashing and "gone" injected) -------------------------------------------------
def _row(i: int, path: str, sha: str, nbytes: int = 10, status: str = "ok") -> FileRow:
    return FileRow(i, path, nbytes, 5, sha, status, None, 7, 100 + i)


def _hasher(hashes: dict[str, str]):
    """sha256_of from a table, recording what it read."""
    read: list[str] = []

    def sha256_of(path: str) -> str | None:
        read.append(path)
        return hashes.get(path)

    return sha256_of, read


def _plan(found, rows, hashes, **kw):
    sha256_of, read = _hasher(hashes)
    plan = plan_update(found, {r.path: r for r in rows}, retry_skipped=False, sha256_of=sha256_of, **kw)
    return plan, read


def test_a_renamed_file_is_a_move_not_a_delete_and_an_add():
    new = ImageRef("/p/new/b.jpg", 10, 9, 11, 555)
    plan, read = _plan([new], [_row(1, "/p/a.jpg", "h1")], {"/p/new/b.jpg": "h1"})
    assert plan.moves == [Move(1, "/p/new/b.jpg", 10, 9, 11, 555)]
    assert (plan.embed, plan.deletes, read, plan.hashed) == ([], [], ["/p/new/b.jpg"], 1)


def test_a_copy_whose_original_stays_is_a_new_file_and_is_not_read():
    a = ImageRef("/p/a.jpg", 10, 5, 7, 101)
    plan, read = _plan([a, ImageRef("/p/copy.jpg", 10, 9)], [_row(1, "/p/a.jpg", "h1")], {"/p/copy.jpg": "h1"})
    assert (plan.moves, plan.embed, plan.deletes, read) == ([], ["/p/copy.jpg"], [], [])


def test_a_moved_file_whose_bytes_changed_is_a_delete_and_an_add():
    plan, read = _plan([ImageRef("/p/b.jpg", 10, 9)], [_row(1, "/p/a.jpg", "h1")], {"/p/b.jpg": "other"})
    assert (plan.moves, plan.embed, plan.deletes, read) == ([], ["/p/b.jpg"], [1], ["/p/b.jpg"])


def test_a_new_file_of_another_size_than_every_gone_file_is_not_read():
    plan, read = _plan([ImageRef("/p/b.jpg", 11, 9)], [_row(1, "/p/a.jpg", "h1")], {"/p/b.jpg": "h1"})
    assert (plan.moves, plan.embed, plan.deletes, read) == ([], ["/p/b.jpg"], [1], [])


def test_two_gone_files_with_the_same_bytes_go_one_to_each_move_by_name_first():
    rows = [_row(1, "/p/x/one.jpg", "h"), _row(2, "/p/x/two.jpg", "h")]
    found = [ImageRef("/p/y/two.jpg", 10, 9), ImageRef("/p/y/one.jpg", 10, 9)]
    plan, _ = _plan(found, rows, dict.fromkeys(["/p/y/one.jpg", "/p/y/two.jpg"], "h"))
    assert sorted((m.id, m.path) for m in plan.moves) == [(1, "/p/y/one.jpg"), (2, "/p/y/two.jpg")]
    assert (plan.embed, plan.deletes) == ([], [])
    plan, _ = _plan(found[:1], rows, {"/p/y/two.jpg": "h"})  # one of the two came back: the other is gone
    assert ([(m.id, m.path) for m in plan.moves], plan.deletes) == ([(2, "/p/y/two.jpg")], [1])


def test_a_refused_row_is_not_a_move_source():
    plan, read = _plan([ImageRef("/p/b.jpg", 10, 9)], [_row(1, "/p/a.jpg", "h1", status="skipped")],
                       {"/p/b.jpg": "h1"})
    assert (plan.moves, plan.embed, plan.deletes, read) == ([], ["/p/b.jpg"], [1], [])


def test_a_file_moved_in_from_outside_the_roots_moves_its_row_when_the_old_path_is_gone():
    outside = _row(7, "/elsewhere/a.jpg", "h1")
    asked: list[str] = []

    def gone(path: str) -> bool:
        asked.append(path)
        return path == "/elsewhere/a.jpg"

    plan, _ = _plan([ImageRef("/p/a.jpg", 10, 9)], [], {"/p/a.jpg": "h1"}, elsewhere=[outside, _row(8, "/o/z", "h", 99)],
                    gone=gone)
    assert ([m.id for m in plan.moves], plan.embed, asked) == ([7], [], ["/elsewhere/a.jpg"])  # other sizes: no stat
    plan, _ = _plan([ImageRef("/p/a.jpg", 10, 9)], [], {"/p/a.jpg": "h1"}, elsewhere=[outside], gone=lambda p: False)
    assert (plan.moves, plan.embed) == ([], ["/p/a.jpg"])  # a copy of a file kept elsewhere


def test_a_stop_while_hashing_possible_moves_deletes_none_of_their_sources():
    rows = [_row(1, "/p/a.jpg", "h1"), _row(2, "/p/b.jpg", "h2"), _row(3, "/p/c.jpg", "h3", nbytes=50)]
    found = [ImageRef("/p/n/a.jpg", 10, 9), ImageRef("/p/n/b.jpg", 10, 9)]
    sha256_of, read = _hasher({"/p/n/a.jpg": "h1", "/p/n/b.jpg": "h2"})
    plan = plan_update(found, {r.path: r for r in rows}, retry_skipped=False, sha256_of=sha256_of,
                       should_stop=lambda: bool(read))
    assert plan.stopped and read == ["/p/n/a.jpg"]
    assert ([m.id for m in plan.moves], plan.deletes) == ([1], [3])  # b may have moved: kept for the next run


def test_moving_10000_files_plans_no_embedding_and_reports_hashing_progress():
    n = 10_000
    rows = [_row(i, f"/old/{i:05d}.jpg", f"h{i}", nbytes=100 + i % 7) for i in range(n)]
    found = [ImageRef(f"/new/deep/{i:05d}.jpg", 100 + i % 7, 9) for i in range(n)]
    progress: list[tuple[int, int]] = []
    plan, read = _plan(found, rows, {f"/new/deep/{i:05d}.jpg": f"h{i}" for i in range(n)},
                       on_hashed=lambda d, t: progress.append((d, t)))
    assert (plan.embed, plan.deletes, len(read)) == ([], [], n)
    assert sorted((m.id, m.path) for m in plan.moves) == [(i, f"/new/deep/{i:05d}.jpg") for i in range(n)]
    assert progress[-1] == (n, n)


# --- the store ------------------------------------------------------------------------------------
def test_a_move_changes_path_and_stat_in_place_and_leaves_the_data_version(tmp_path):
    with Store(tmp_path / "s.sqlite", create=True) as store:
        d = np.arange(4, dtype=np.float32)
        store.apply([Upsert("/p/a.jpg", 10, 5, "h1", "ok", descriptor=d), Upsert("/p/b.jpg", 10, 5, "h2", "ok",
                                                                                  descriptor=d + 1)])
        (a, b), version, gen = sorted(store.rows(), key=lambda r: r.path), store.data_version, store.generation
        store.apply(moves=[Move(a.id, "/q/\udcff.jpg", 11, 6, 7, 8)])  # a name that is not UTF-8: stored as bytes
        assert {r.id: (r.path, r.nbytes, r.mtime_ns, r.ctime_ns, r.inode) for r in store.rows()} == {
            a.id: ("/q/\udcff.jpg", 11, 6, 7, 8), b.id: ("/p/b.jpg", 10, 5, None, None)}
        assert store.data_version == version and store.generation == gen + 1  # serve sees it; vectors stay
        assert np.array_equal(store.descriptors_of([a.id]), d[None])


# --- the engine and the command -------------------------------------------------------------------
def _no_model(monkeypatch) -> None:
    """Any embedding in this process (the model's work) fails the test."""
    from retrieval.engine import update

    def refuse(model, paths, pca):  # noqa: ANN001, ANN202
        raise AssertionError(f"model work for {len(list(paths))} files")

    monkeypatch.setattr(update, "embedded_here", refuse)


def test_a_moved_and_renamed_photo_keeps_its_embedding_through_the_cli(tmp_path, monkeypatch):
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    make_photos(photos, range(4))
    index_tiny(photos, ix)
    vectors = (ix / VECTORS_FILE).read_bytes(), (ix / VECTORS_FILE).stat().st_mtime_ns
    with Store(ix / "store.sqlite") as s:
        before = {Path(r.path).name: r.id for r in s.rows()}
    shutil.copy(photos / "photo_001.jpg", tmp_path / "keep.jpg")
    (photos / "2019").mkdir()
    os.rename(photos / "photo_001.jpg", photos / "2019" / "renamed.jpg")
    _no_model(monkeypatch)
    r = index_tiny(photos, ix)
    assert "4 images indexed | added 0, updated 0, removed 0, moved 1, unchanged 3" in r.stdout
    with Store(ix / "store.sqlite") as s:
        assert s.paths([before["photo_001.jpg"]]) == {before["photo_001.jpg"]: str(photos / "2019" / "renamed.jpg")}
    assert ((ix / VECTORS_FILE).read_bytes(), (ix / VECTORS_FILE).stat().st_mtime_ns) == vectors
    monkeypatch.undo()
    top = json.loads(query_index(ix, str(tmp_path / "keep.jpg"), "--json", "-k", "4").stdout)
    assert str(photos / "2019" / "renamed.jpg") in {h["path"] for h in top}
    top = json.loads(query_index(ix, str(photos / "2019" / "renamed.jpg"), "--json", "-k", "1").stdout)
    assert [h["path"] for h in top] == [str(photos / "2019" / "renamed.jpg")]


def _fill(store: Store, folder: Path, n: int, descriptor: np.ndarray, name: str) -> None:
    """n tiny files with rows of their own hash (no model: a row is what an embedding would store)."""
    folder.mkdir(parents=True)
    ups = []
    for i in range(n):
        p = folder / f"{name}{i:05d}.jpg"
        data = f"{name} {i}".encode()
        p.write_bytes(data)
        st = p.stat()
        ups.append(Upsert(str(p), st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest(), "ok",
                          descriptor=descriptor + np.float32(i % 97) / 97, ctime_ns=st.st_ctime_ns, inode=st.st_ino))
    store.apply(ups)


def test_moving_a_folder_of_10000_photos_costs_no_model_work(tmp_path, monkeypatch):
    """The engine at 10,000 rows: a folder moved inside the indexed one and another moved into it
    from outside; nothing reaches the model, every id stays, the vector index is not rebuilt."""
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    make_photos(photos, range(2))
    index_tiny(photos, ix)
    with Index.open(ix) as idx:
        d = idx.store.descriptors()[1][0]
        _fill(idx.store, photos / "trip", 9_000, d, "t")
        _fill(idx.store, tmp_path / "outside", 1_000, d, "o")
        idx.refresh()
        ids = {Path(r.path).name: r.id for r in idx.store.rows()}
    vectors = (ix / VECTORS_FILE).stat().st_mtime_ns
    os.rename(photos / "trip", photos / "2024-trip")
    os.rename(tmp_path / "outside", photos / "came-in")
    _no_model(monkeypatch)
    with Index.open(ix) as idx:
        summary = idx.update([photos])
        rows = list(idx.store.rows())
    assert (summary.moved, summary.added, summary.removed, summary.unchanged) == (10_000, 0, 0, 2)
    assert {Path(r.path).name: r.id for r in rows} == ids and len(rows) == 10_002
    assert sum(Path(r.path).parent.name in ("2024-trip", "came-in") for r in rows) == 10_000
    assert (ix / VECTORS_FILE).stat().st_mtime_ns == vectors


@pytest.mark.parametrize("gone_first", [True, False])
def test_a_copy_while_the_original_stays_is_embedded(tmp_path, gone_first):
    """The engine's own `gone`: a copy outside the roots whose original is still there is new."""
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    make_photos(photos, range(2))
    other = tmp_path / "other"
    make_photos(other, [5])
    index_tiny(other, ix)
    index_tiny(photos, ix)
    shutil.copy(other / "photo_005.jpg", photos / "copy.jpg")
    if gone_first:
        os.remove(other / "photo_005.jpg")
    r = index_tiny(photos, ix)
    assert ("moved 1" in r.stdout) is gone_first and ("added 1" in r.stdout) is not gone_first, r.stdout

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.errors import SchemaVersionError
from retrieval.store import SCHEMA_VERSION, Store, Touch, Upsert

from .helpers import old_store


@pytest.fixture()
def store(tmp_path):
    with Store(tmp_path / "s.sqlite", create=True) as s:
        yield s


def test_new_store_is_at_current_schema(store):
    assert store.schema_version == SCHEMA_VERSION and store.generation == 0
    assert {"images", "meta"} <= set(store.db.table_names())


def test_newer_schema_refused(tmp_path):
    p = tmp_path / "s.sqlite"
    Store(p, create=True).close()
    conn = sqlite3.connect(p)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="upgrade"):
        Store(p)


def test_missing_store_not_created(tmp_path):
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "nope.sqlite")


@settings(max_examples=20, deadline=None)
@given(vecs=st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=4, max_size=4), min_size=1, max_size=8))
def test_descriptor_round_trip(tmp_path_factory, vecs):
    with Store(tmp_path_factory.mktemp("s") / "s.sqlite", create=True) as s:
        arr = np.array(vecs, np.float32)
        s.apply([Upsert(f"/p/{i}.jpg", 1, 2, "h", "ok", descriptor=v) for i, v in enumerate(arr)])
        ids, x = s.descriptors()
        assert len(ids) == len(arr)
        np.testing.assert_array_equal(x, arr)


def test_upsert_delete_touch_and_generation(store):
    store.apply([Upsert("/a/x.jpg", 1, 10, "h1", "ok", width=3, height=4, descriptor=np.ones(2)),
                 Upsert("/a/y.jpg", 1, 10, "h2", "skipped", "broken"),
                 Upsert("/ab/z.jpg", 1, 10, "h3", "ok", descriptor=np.zeros(2))])
    assert store.generation == 1
    assert [r.path for r in store.rows(under=["/a"])] == ["/a/x.jpg", "/a/y.jpg"]  # not /ab
    x = next(store.rows(under=["/a/x.jpg"]))
    store.apply([Upsert("/a/x.jpg", 5, 20, "h9", "ok", descriptor=np.full(2, 3.0))], touches=[])
    again = next(store.rows(under=["/a/x.jpg"]))
    assert again.id == x.id and again.sha256 == "h9"  # same row, replaced
    store.apply(deletes=[x.id], touches=[(3, 7, 70)])
    assert store.count("ok") == 1 and store.skipped() == [("/a/y.jpg", "broken")]
    assert next(store.rows(under=["/ab"])).mtime_ns == 70
    assert store.generation == 3


def test_failed_transaction_rolls_back(store):
    store.apply([Upsert("/a/x.jpg", 1, 10, "h1", "ok", descriptor=np.ones(2))])
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.db.execute("DELETE FROM images")
            raise RuntimeError("crash mid-batch")
    assert store.count() == 1 and store.generation == 1


def test_meta_json(store):
    store.set_meta(config={"a": [1, 2]}, weights_id="sha256:x")
    assert store.get_meta("config") == {"a": [1, 2]} and store.get_meta("missing", 5) == 5


@settings(max_examples=200, deadline=None)
@given(roots=st.lists(st.sampled_from(["/a", "/a/b", "/a-b", "/a/b/c.jpg", "/ab", "/", "/z/y"]), max_size=4),
       path=st.sampled_from(["/a/x.jpg", "/a/b/c.jpg", "/a-b/q.jpg", "/ab/q.jpg", "/a.jpg", "/z/y/w.jpg", "/z/q"]))
def test_path_filter_matches_brute_force(roots, path):
    from retrieval.store import PathFilter

    def under(p, r):
        r = r.rstrip("/")
        return p == r or p.startswith(r + "/")

    assert (path in PathFilter(roots)) == any(under(path, r) for r in roots)


def test_v1_store_migrates_to_current(tmp_path):
    """A store written by schema 1 (before local descriptors) opens, keeps its rows, gains the columns."""
    import sqlite_utils

    from retrieval.store.schema import _v1

    p = tmp_path / "old.sqlite"
    db = sqlite_utils.Database(p)
    _v1(db)
    db.execute("INSERT INTO images(path, size, mtime_ns, status, descriptor) VALUES ('/a.jpg', 1, 2, 'ok', ?)",
               [np.ones(3, np.float32).tobytes()])
    db.execute("PRAGMA user_version = 1")
    db.conn.commit()
    db.conn.close()
    with Store(p) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert {"local_feats", "local_coords", "grid_h", "grid_w"} <= set(s.db.table("images").columns_dict)
        ids, x = s.descriptors()
        assert x.tolist() == [[1, 1, 1]] and s.local(ids) == {int(ids[0]): None}


def test_v2_store_migrates_with_ctime_and_inode_unknown(tmp_path):
    """Schema 3 adds each file's ctime and inode; rows from schema 2 hold NULL (not known) until
    the next update records them."""
    p = old_store(tmp_path / "old.sqlite", 2)
    with Store(p) as s:
        assert s.schema_version == SCHEMA_VERSION >= 3
        (row,) = s.rows()
        assert (row.mtime_ns, row.ctime_ns, row.inode) == (2, None, None)
        s.apply(touches=[Touch(row.id, 1, 2, 30, 40)])
        (row,) = s.rows()
        assert (row.ctime_ns, row.inode) == (30, 40)


def test_times_and_inodes_past_int64_are_stored_not_refused(store):
    """A file dated 2999 (st_mtime_ns about 3.3e19) or an inode past 2**63 (NFS, FUSE) fit no
    SQLite INTEGER as they are: they are clamped (times) or taken as the same 64 bits signed
    (inodes), and the batch they are in commits."""
    from retrieval.types import INT64_MAX, INT64_MIN, int64_id

    y2999 = 32503680000 * 10**9
    big_inode = 2**64 - 5
    store.apply([Upsert("/a/late.jpg", 1, y2999, "h", "ok", descriptor=np.ones(2), ctime_ns=-y2999, inode=big_inode),
                 Upsert("/a/x.jpg", 1, 10, "h2", "ok", descriptor=np.ones(2))])
    late = next(store.rows(under=["/a/late.jpg"]))
    assert (late.mtime_ns, late.ctime_ns, late.inode) == (INT64_MAX, INT64_MIN, -5) and store.count("ok") == 2
    assert int64_id(big_inode) == int64_id(big_inode - 2**64) == -5 and int64_id(2**63 - 1) == 2**63 - 1
    store.apply(touches=[Touch(late.id, 1, y2999 + 1, y2999, 2**63)])
    late = next(store.rows(under=["/a/late.jpg"]))
    assert (late.mtime_ns, late.ctime_ns, late.inode) == (INT64_MAX, INT64_MAX, INT64_MIN)


def test_lookups_by_id_past_sqlite_variable_limit(store):
    """paths() and local() with more ids than one SQLite statement may hold (32,766): eval asks for
    every database id at once, and a query over mostly-gone files for thousands."""
    store.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)  # SQLite's default (this build: 250,000)
    store.apply([Upsert(f"/a/{i}.jpg", 1, 10, f"h{i}", "ok", descriptor=np.ones(2)) for i in range(3)])
    ids = [r.id for r in store.rows()]
    many = list(range(10**6, 10**6 + 40_000)) + ids  # unknown ids first, the real ones in a later part
    assert store.paths(many) == {i: f"/a/{n}.jpg" for n, i in enumerate(ids)}
    assert set(store.local(many)) == set(ids)


def test_size_of_an_indexed_image_and_commits_by_others(store):
    """What serve asks of the store without SQL of its own: an indexed image's size (None for a
    refused file or an unknown id), and a counter that moves when another connection commits."""
    store.apply([Upsert("/a.jpg", 10, 1, "h", "ok", width=640, height=480, descriptor=np.ones(4, np.float32)),
                 Upsert("/b.jpg", 10, 1, None, "skipped", "not an image")])
    ids = {p: i for i, p in store.paths(range(1, 10)).items()}
    assert store.size_of(ids["/a.jpg"]) == (640, 480)
    assert store.size_of(ids["/b.jpg"]) is None and store.size_of(10**6) is None
    seen = store.commits()
    store.set_meta(x=1)  # its own commit: unseen, as SQLite's data_version is
    assert store.commits() == seen
    with Store(store.path) as other:
        other.set_meta(x=2)
    assert store.commits() != seen


def test_descriptors_of_another_size_are_refused_by_every_reader(store):
    """The store's one descriptor reader: a row whose blob is not as long as the others' is a
    StoreCorruptError naming its id, whichever way the descriptors are read."""
    from retrieval.errors import StoreCorruptError

    store.apply([Upsert(f"/{i}.jpg", 1, 1, str(i), "ok", descriptor=np.full(4, i, np.float32)) for i in range(5)])
    ids, x = store.descriptors()
    assert x.shape == (5, 4) and x[:, 0].tolist() == [0, 1, 2, 3, 4]
    short = int(ids[3])
    store.db.execute("UPDATE images SET descriptor = substr(descriptor, 1, 12) WHERE id = ?", [short])
    for read in (store.descriptors, lambda: store.descriptors_of(ids), lambda: list(store.descriptors_chunks(2))):
        with pytest.raises(StoreCorruptError, match=f"descriptors of ids {short} are not 16-byte"):
            read()
    np.testing.assert_array_equal(store.descriptors_of(ids[:3]), x[:3])

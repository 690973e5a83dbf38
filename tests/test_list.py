"""`retrieve list` (issue 24, "What is indexed"): indexed and refused files by path, streamed from
SQLite (the store's listing is a generator over one cursor, and a large table is never all in
memory), as a table or JSON lines, filtered by folder or file; when each file was indexed (schema 4)."""

from __future__ import annotations

import json
import os
import sqlite3
import tracemalloc
from itertools import islice
from types import GeneratorType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrieval.store import SCHEMA_VERSION, Store, Touch, Upsert

from .helpers import old_store, run


@pytest.fixture()
def store(tmp_path):
    with Store(tmp_path / "s.sqlite", create=True) as s:
        yield s


ODD = os.fsdecode(b"/a/b/\xff.jpg")  # stored as the file system's bytes (a BLOB)


def _fill(store: Store) -> None:
    store.apply([Upsert(p, 1, 2, "h", "ok", descriptor=np.ones(2)) for p in
                 ("/a/b.jpg", "/a/b/c.jpg", "/a/bc.jpg", "/a0.jpg", "/x/y.jpg", ODD)]
                + [Upsert("/a/b/s.jpg", 1, 2, None, "skipped", error="bad; fix: re-save it")])


@pytest.mark.parametrize(("under", "status", "expected"), [
    (None, "ok", ["/a/b.jpg", "/a/b/c.jpg", "/a/bc.jpg", "/a0.jpg", "/x/y.jpg", ODD]),
    (["/a/b"], None, ["/a/b/c.jpg", "/a/b/s.jpg", ODD]),  # a folder: not its sibling b.jpg nor bc.jpg
    (["/a/b"], "ok", ["/a/b/c.jpg", ODD]),
    (["/a/b"], "skipped", ["/a/b/s.jpg"]),
    (["/a/b.jpg", "/x/"], "ok", ["/a/b.jpg", "/x/y.jpg"]),  # a file, and a folder written with its slash
    (["/a", "/a/b"], "ok", ["/a/b.jpg", "/a/b/c.jpg", "/a/bc.jpg", ODD]),  # nested roots: each row once
    (["/"], "ok", ["/a/b.jpg", "/a/b/c.jpg", "/a/bc.jpg", "/a0.jpg", "/x/y.jpg", ODD]),
    ([os.fsdecode(b"/a/b/\xff.jpg")], "ok", [ODD]),  # a root that is not UTF-8 itself
    (["/nowhere"], None, []),
])
def test_listing_filters_by_folder_or_file(store, under, status, expected):
    _fill(store)
    got = [r.path for r in store.listing(under=under, status=status)]
    assert sorted(got) == sorted(expected) and len(got) == len(set(got))


def test_listing_streams_from_sqlite(tmp_path):
    """100,000 rows: the first comes after a few SQLite steps, not a scan of the table, and
    going through all of them never holds them all (a list of them would take tens of MB)."""
    n = 100_000
    with Store(tmp_path / "big.sqlite", create=True) as s:
        s.db.conn.executemany("INSERT INTO images(path, size, mtime_ns, status, indexed_ns) VALUES (?, 1, 2, 'ok', 3)",
                              ((f"/photos/{i:07d}.jpg",) for i in range(n)))
        s.db.conn.commit()
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        s.db.conn.set_progress_handler(count, 100)
        rows = s.listing(under=["/photos"])
        assert isinstance(rows, GeneratorType)
        first = list(islice(rows, 3))
        early = steps[0]
        assert [r.path for r in first] == ["/photos/0000000.jpg", "/photos/0000001.jpg", "/photos/0000002.jpg"]
        tracemalloc.start()
        rest = sum(1 for _ in rows)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        s.db.conn.set_progress_handler(None, 0)
        assert rest == n - 3
        assert early * 50 < steps[0], (early, steps)  # the first rows (a part of ROWS_AT_ONCE) cost under 2% of all
        assert peak < 2_000_000, peak  # bytes: a handful of rows at a time


def test_row_by_id_or_path(store):
    _fill(store)
    row = store.row("/x/y.jpg")
    assert row is not None and store.row(row.id) == row and row.status == "ok"
    assert store.row(ODD) is not None and store.row(ODD).path == ODD  # type: ignore[union-attr]
    assert store.row(10_000) is None and store.row("/x") is None


def test_indexed_time_set_when_embedded_kept_when_touched(store):
    store.apply([Upsert("/a.jpg", 1, 2, "h", "ok", descriptor=np.ones(2))])
    (first,) = store.listing()
    assert first.indexed_ns is not None
    store.apply(touches=[Touch(first.id, 1, 5)])  # same bytes, new time: not indexed again
    assert store.row(first.id).indexed_ns == first.indexed_ns  # type: ignore[union-attr]
    store.apply([Upsert("/a.jpg", 2, 6, "h2", "ok", descriptor=np.ones(2))])
    assert store.row(first.id).indexed_ns > first.indexed_ns  # type: ignore[union-attr,operator]


def test_v3_store_migrates_with_indexed_time_unknown(tmp_path):
    p = old_store(tmp_path / "old.sqlite", 3)
    with Store(p) as s:
        assert s.schema_version == SCHEMA_VERSION >= 4
        (row,) = s.listing()
        assert row.indexed_ns is None
    with sqlite3.connect(p) as conn:
        assert "indexed_ns" in {r[1] for r in conn.execute("PRAGMA table_info(images)")}


# --- the command -------------------------------------------------------------------------------

def test_list_table_json_and_filter(built):
    photos, ix = built
    table = run("list", "--index", str(ix))
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "size", "indexed", "path"]
    assert len(lines) == 13 and lines[1].rstrip().endswith(str(photos / "photo_000.jpg"))
    assert "kB" in lines[1] and lines[1].split()[4].count(":") == 2  # a size in kB, a time of day
    rows = [json.loads(x) for x in run("list", "--index", str(ix), "--json").stdout.splitlines()]
    assert [r["path"] for r in rows] == sorted(str(p) for p in photos.iterdir())
    assert all(r["size"] == os.path.getsize(r["path"]) and r["indexed"].endswith("Z") for r in rows)
    assert len({r["id"] for r in rows}) == 12
    one = run("list", str(photos / "photo_003.jpg"), "--index", str(ix), "--json")
    assert [json.loads(x)["path"] for x in one.stdout.splitlines()] == [str(photos / "photo_003.jpg")]
    rel = run("list", os.path.relpath(photos), "--index", str(ix), "--json")  # resolved like other paths
    assert len(rel.stdout.splitlines()) == 12


def test_list_skipped_says_why(tmp_path):
    from .helpers import index_tiny, make_photos

    photos = tmp_path / "photos"
    make_photos(photos, range(2))
    (photos / "notes.jpg").write_bytes(b"not a picture")
    index_tiny(photos, tmp_path / "ix")
    out = run("list", "--skipped", "--index", str(tmp_path / "ix"))
    assert out.exit_code == 0
    heading, line = out.stdout.splitlines()
    assert heading.split() == ["id", "size", "indexed", "path:", "reason"]
    assert f"{photos / 'notes.jpg'}: not a recognised image" in line and "13 B" in line
    (row,) = [json.loads(x) for x in run("list", "--skipped", "--json", "--index", str(tmp_path / "ix")).stdout.splitlines()]
    assert row["path"] == str(photos / "notes.jpg") and "not a recognised image" in row["reason"]
    assert len(run("list", "--index", str(tmp_path / "ix")).stdout.splitlines()) == 3  # the two photos + heading


def test_list_of_a_path_with_nothing_indexed_is_an_error(built, tmp_path):
    photos, ix = built
    r = run("list", str(tmp_path), "--index", str(ix))
    assert r.exit_code == 1 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert f"nothing indexed in the index at {ix} is at or under {tmp_path}" in line and "`retrieve list`" in line


def test_remove_of_nothing_points_at_list(index, tmp_path):
    r = run("remove", str(tmp_path / "elsewhere.jpg"), "--index", str(index))
    assert r.exit_code == 1
    (line,) = r.stderr.splitlines()
    assert "`retrieve list` shows what is indexed" in line


def test_list_help(built):
    r = run("list", "--help")
    assert r.exit_code == 0 and "--skipped" in r.stdout and "JSON lines" in r.stdout


@pytest.mark.subprocess
def test_list_imports_no_torch(built, tmp_path):
    from .test_startup import _imports

    photos, ix = built
    assert _imports(tmp_path, "list", str(photos), "--index", str(ix)) == set()
    assert _imports(tmp_path, "list", "--skipped", "--json", "--index", str(ix)) == set()


@given(st.text())
def test_paths_are_shown_as_everywhere_else(text):
    """The table's shortcut for printable paths writes what types.shown writes, for any text
    (control characters, line breaks, surrogate escapes of bytes that are not UTF-8 included)."""
    from retrieval.cli.listing import _shown
    from retrieval.types import shown

    assert _shown(text) == shown(text)
    assert _shown(os.fsdecode(b"/a/\xff\n.jpg")) == "/a/\\xff\\n.jpg"

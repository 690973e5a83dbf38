"""`retrieve query --like` (issue 24, "More like this"): search with an indexed file's stored
descriptor, named by path or id; no decode and no model (torch is not imported), re-ranked with the
file's stored local descriptors; the file itself left out of its own results."""

from __future__ import annotations

import json
import sqlite3

import pytest

from retrieval.engine import Index

from .helpers import run
from .test_startup import _imports


def _hits(*args: str) -> list[dict]:
    r = run("query", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _ids(ix) -> dict[str, int]:
    with Index.open(ix) as idx:
        return {r.path: r.id for r in idx.files()}


def test_like_is_the_query_of_the_same_bytes_without_itself(built):
    """Same descriptor, same ranking: `query --like P` is `query P` (P's bytes embedded again) with P's
    own hit, the first, left out; the rest in the same order with the same scores."""
    photos, ix = built
    for p in (photos / "photo_003.jpg", photos / "photo_010.jpg"):
        embedded = _hits(str(p), "--index", str(ix), "-k", "12")
        like = _hits("--like", str(p), "--index", str(ix), "-k", "11")
        assert embedded[0]["path"] == str(p) and embedded[0]["score"] == pytest.approx(1.0, abs=1e-4)
        rest = [h for h in embedded if h["path"] != str(p)]
        assert [h["path"] for h in like] == [h["path"] for h in rest] and len(like) == 11
        assert [h["score"] for h in like] == pytest.approx([h["score"] for h in rest], abs=1e-4)
        assert [h["rank"] for h in like] == list(range(1, 12))


def test_like_by_id_and_the_default_k(built):
    photos, ix = built
    p = photos / "photo_005.jpg"
    by_path = _hits("--like", str(p), "--index", str(ix))
    assert len(by_path) == 10 and str(p) not in {h["path"] for h in by_path}  # k results, none of them itself
    i = _ids(ix)[str(p)]
    assert _hits("--like", str(i), "--index", str(ix)) == by_path
    assert _hits("--like", f"id:{i}", "--index", str(ix)) == by_path


def test_like_reranks_with_stored_local_descriptors_without_the_model(built, monkeypatch):
    photos, ix = built
    with sqlite3.connect(ix / "store.sqlite") as conn:  # the index has them (its patch PCA was fitted)
        assert conn.execute("SELECT count(*) FROM images WHERE local_feats IS NULL").fetchone()[0] == 0

    def refused(*args, **kwargs):
        raise AssertionError("the model or a decoder was asked for")

    for name in ("backbone", "queries"):  # the model, and the one way a query file is embedded
        monkeypatch.setattr(Index, name, refused)
    hits = _hits("--like", str(photos / "photo_002.jpg"), "--rerank", "--index", str(ix), "-k", "5")
    assert len(hits) == 5 and all("inliers" in h for h in hits)
    table = run("query", "--like", str(photos / "photo_002.jpg"), "--rerank", "--index", str(ix))
    assert table.exit_code == 0 and "inliers" in table.stdout and "photo_002.jpg" not in table.stdout


def test_like_reranks_a_row_without_local_descriptors_from_its_file(index, built):
    photos, _ = built
    with sqlite3.connect(index / "store.sqlite") as conn:
        conn.execute("UPDATE images SET local_feats = NULL, local_coords = NULL")
    hits = _hits("--like", str(photos / "photo_002.jpg"), "--rerank", "--index", str(index), "-k", "3")
    assert len(hits) == 3 and all("inliers" in h for h in hits)


@pytest.mark.parametrize(("like", "needle"), [("nowhere.jpg", "nowhere.jpg: no such file"),
                                              ("99999", "id 99999: no such file"),
                                              ("id:0", "id 0: no such file")])
def test_unknown_like_is_one_line_pointing_at_list(index, like, needle):
    r = run("query", "--like", like, "--index", str(index))
    assert r.exit_code == 2 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert needle in line and line.endswith(f"fix: look up what the index holds (Index.files lists it; an update adds "
                                           f"a folder) (`retrieve list --index {index}`)"), line


def test_like_of_a_refused_file_says_so(tmp_path):
    from .helpers import index_tiny, make_photos

    photos = tmp_path / "photos"
    make_photos(photos, range(2))
    (photos / "notes.jpg").write_bytes(b"not a picture")
    index_tiny(photos, tmp_path / "ix")
    r = run("query", "--like", str(photos / "notes.jpg"), "--index", str(tmp_path / "ix"))
    assert r.exit_code == 2
    (line,) = r.stderr.splitlines()
    assert "was refused when indexed" in line and "(`retrieve list --skipped --index" in line


@pytest.mark.parametrize("args", [[], ["a.jpg", "--like", "1"], ["--like", "1", "--bbox", "0,0,5,5"],
                                  ["--like", "1", "--out", "maps"]])
def test_like_or_images_not_both(index, args):
    r = run("query", *args, "--index", str(index))
    assert r.exit_code == 2
    (line,) = r.stderr.splitlines()
    assert "--like" in line


@pytest.mark.subprocess
def test_like_imports_no_torch(built, tmp_path):
    """Like `retrieve info`: no model, so no torch (tests/test_startup.py); --rerank neither, when
    the file's local descriptors are stored."""
    photos, ix = built
    assert _imports(tmp_path, "query", "--like", str(photos / "photo_001.jpg"), "--index", str(ix)) == set()
    assert _imports(tmp_path, "query", "--like", "id:1", "--rerank", "--index", str(ix)) == set()

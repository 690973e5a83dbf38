"""engine/dedupe.py: exact and verified near-copy groups from a kNN graph taken in batches; a folder
checked against an index. The tiny random backbone only: these check the mechanics, not quality."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageEnhance

from retrieval import vectors
from retrieval.cli import app
from retrieval.engine import Index
from retrieval.config import DedupeOptions
from retrieval.engine import dedupe as dd
from retrieval.errors import UsageError
from retrieval.local import LocalFeatures, grid_xy
from retrieval.store import ImageFacts

from .conftest import synth_photo
from .helpers import clean_exit, index_tiny, one_line_error, run

COPIES = ("c_exact.jpg", "c_q50.jpg", "c_half.png", "c_crop.jpg", "c_bright.jpg")


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Path]:
    """An index of six different photos, five copies of p0 (same bytes, recompressed, half size,
    cropped, brighter) and one same-bytes copy of p1; the originals are the older files."""
    root = tmp_path_factory.mktemp("dedupe")
    photos = root / "photos"
    photos.mkdir()
    for s in range(6):
        synth_photo(s, (320, 240)).save(photos / f"p{s}.jpg", quality=92)
    o = Image.open(photos / "p0.jpg")
    shutil.copy(photos / "p0.jpg", photos / "c_exact.jpg")
    o.save(photos / "c_q50.jpg", quality=50)
    o.resize((160, 120)).save(photos / "c_half.png")
    o.crop((16, 12, 304, 228)).save(photos / "c_crop.jpg", quality=90)
    ImageEnhance.Brightness(o).enhance(1.2).save(photos / "c_bright.jpg", quality=90)
    shutil.copy(photos / "p1.jpg", photos / "d_exact.jpg")
    for i, f in enumerate(sorted(photos.iterdir(), key=lambda f: (not f.name.startswith("p"), f.name))):
        os.utime(f, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # the originals older than the copies
    index_tiny(photos, root / "ix")
    return {"photos": photos, "index": root / "ix", "root": root}


def _names(group: dd.Group) -> list[str]:
    return [Path(m.path).name for m in group.members]


def test_planted_copies_group_and_different_photos_do_not(planted):
    with Index.open(planted["index"]) as idx:
        report = dd.index_duplicates(idx)
    assert report.images == 12 and report.unverifiable == 0
    by_keeper = {_names(g)[0]: g for g in report.groups}
    assert set(by_keeper) == {"p0.jpg", "p1.jpg"}, [_names(g) for g in report.groups]
    near = by_keeper["p0.jpg"]
    assert near.kind == "near" and set(_names(near)) == {"p0.jpg", *COPIES}
    assert {x.kind for x in near.links} == {"exact", "near"}
    exact = by_keeper["p1.jpg"]
    assert exact.kind == "exact" and _names(exact) == ["p1.jpg", "d_exact.jpg"]
    assert all(x.kind == "exact" and x.score is None for x in exact.links)


def test_keeper_is_the_largest_then_the_oldest(planted):
    with Index.open(planted["index"]) as idx:
        group = next(g for g in dd.index_duplicates(idx).groups if g.kind == "near")
    assert _names(group)[0] == "p0.jpg"  # oldest of the full-size copies
    assert _names(group)[-1] == "c_half.png"  # fewest pixels last


def test_exact_only_needs_no_vectors(planted):
    with Index.open(planted["index"]) as idx:
        report = dd.duplicates(idx.store, None, None, lambda ids, pca: {}, DedupeOptions(exact_only=True))
    assert [(g.kind, sorted(_names(g))) for g in report.groups] == [
        ("exact", ["c_exact.jpg", "p0.jpg"]), ("exact", ["d_exact.jpg", "p1.jpg"])]
    assert report.batches == ()


def test_folder_against_index(planted, tmp_path):
    card = tmp_path / "card"
    card.mkdir()
    o = Image.open(planted["photos"] / "p2.jpg")
    shutil.copy(planted["photos"] / "p3.jpg", card / "same.jpg")
    o.save(card / "recompressed.jpg", quality=60)
    synth_photo(77, (320, 240)).save(card / "new.jpg", quality=90)
    (card / "broken.jpg").write_bytes(b"not a picture")
    paths = sorted(str(p) for p in card.iterdir())
    with Index.open(planted["index"]) as idx:
        got = {Path(a.path).name: a for a in dd.folder_against_index(idx, paths)}
        unchecked = dd.folder_against_index(idx, paths, DedupeOptions(exact_only=True))
    assert got["same.jpg"].kind == "exact" and Path(got["same.jpg"].match.path).name == "p3.jpg"
    assert got["recompressed.jpg"].kind == "near" and Path(got["recompressed.jpg"].match.path).name == "p2.jpg"
    assert got["new.jpg"].kind == "new" and got["new.jpg"].match is None
    assert got["broken.jpg"].kind == "refused" and got["broken.jpg"].reason
    assert [a.kind for a in unchecked] == ["unchecked", "unchecked", "unchecked", "exact"]


# --- the kNN stage: batches, never n x n ------------------------------------------------------

class _Recording:
    """A VectorIndex's search, recording the shape of every query batch."""

    def __init__(self, vec: vectors.VectorIndex) -> None:
        self.vec, self.shapes = vec, []

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.vec, name)

    def search(self, xq: np.ndarray, k: int):  # noqa: ANN201
        self.shapes.append((len(xq), k))
        return self.vec.search(xq, k)


def _planted_vectors(n: int, d: int = 16, pairs: int = 20, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    xb = rng.normal(size=(n, d)).astype(np.float32)
    planted = set()
    for j in range(pairs):  # row 2j + 1 is a near copy of row 2j
        xb[2 * j + 1] = xb[2 * j] + 0.01 * rng.normal(size=d)
        planted.add((2 * j, 2 * j + 1))
    return xb / np.linalg.norm(xb, axis=1, keepdims=True), planted


def test_knn_graph_is_searched_in_batches_never_n_by_n():
    n, batch, k = 5000, 512, 4
    xb, planted = _planted_vectors(n)
    rec = _Recording(vectors.build(xb, np.arange(n, dtype=np.int64), kind="flat", fingerprint="f", data_version=1))
    got = {(int(a), int(b)) for kb in dd.knn_pairs(rec, k=k, threshold=0.95, batch=batch)  # type: ignore[arg-type]
           for a, b in zip(kb.a, kb.b)}
    assert rec.shapes == [(min(batch, n - s), k + 1) for s in range(0, n, batch)]  # at most batch x (k + 1)
    assert got == planted  # random 16-d vectors are never 0.95 alike; the planted pairs always are


def test_knn_pairs_match_brute_force():
    xb, _ = _planted_vectors(300, d=8, pairs=5, seed=3)
    vec = vectors.build(xb, np.arange(300, dtype=np.int64) + 1000, kind="flat", fingerprint="f", data_version=1)
    got = {(int(a), int(b)) for kb in dd.knn_pairs(vec, k=3, threshold=0.6, batch=64) for a, b in zip(kb.a, kb.b)}
    s = xb @ xb.T
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :3]
    want = {(min(i, j) + 1000, max(i, j) + 1000) for i in range(300) for j in top[i] if s[i, j] >= 0.6}
    assert got == want


# --- verification levels on hand-made patch sets ----------------------------------------------

def _feats(rng: np.random.Generator, grid=(10, 10)) -> LocalFeatures:
    f = rng.normal(size=(grid[0] * grid[1], 64)).astype(np.float32)  # local.DEFAULT_DIM
    return LocalFeatures((f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float16), grid_xy(grid), grid)


def _moved(f: LocalFeatures, keep: np.ndarray, shift=(2.0, 1.0), mirror=False, seed=9) -> LocalFeatures:
    """Another image that shows f's patches `keep` shifted (or mirrored), plus fresh ones elsewhere."""
    rng = np.random.default_rng(seed)
    other = _feats(rng, f.grid)
    feats = other.feats.copy()
    xy = other.xy.copy()
    feats[: len(keep)] = f.feats[keep]
    moved = f.xy[keep] + np.array(shift, np.float32)
    if mirror:
        moved[:, 0] = f.grid[1] - f.xy[keep, 0]
    xy[: len(keep)] = moved
    return LocalFeatures(feats, xy, f.grid)


def test_coverage_separates_copies_from_other_shots():
    rng = np.random.default_rng(1)
    a = _feats(rng)
    copy, mirror = _moved(a, np.arange(60)), _moved(a, np.arange(60), mirror=True)
    shot = _moved(a, np.arange(12))  # a dozen patches agree: verified, but not a copy
    options = DedupeOptions()
    n, cov, mirrored = dd.check_pair(a, copy)
    assert (dd.classify(n, cov, options), mirrored) == ("near", False) and cov >= 0.55
    n, cov, mirrored = dd.check_pair(a, mirror)
    assert (dd.classify(n, cov, options), mirrored) == ("near", True)
    n, cov, _ = dd.check_pair(a, shot)
    assert dd.classify(n, cov, options) == "similar"
    n, cov, _ = dd.check_pair(a, _feats(np.random.default_rng(5)))
    assert dd.classify(n, cov, options) is None


def test_similar_groups_are_reported_apart_only_when_asked():
    rng = np.random.default_rng(2)
    a = _feats(rng)
    feats = {1: a, 2: _moved(a, np.arange(70)), 3: _moved(a, np.arange(12), shift=(1.0, 0.0), seed=10), 4: _feats(rng)}
    xb = np.ones((4, 4), np.float32) / 2  # every pair a candidate
    vec = vectors.build(xb, np.array([1, 2, 3, 4], np.int64), kind="flat", fingerprint="f", data_version=1)

    class Store:  # the two queries duplicates asks of a store
        def ids_by_hash(self) -> dict:
            return {}

        def count(self, status: str) -> int:
            return 4

        def facts(self, ids) -> dict:  # noqa: ANN001
            return {i: ImageFacts(i, f"/p/{i}.jpg", 10, 10, i, None) for i in ids}

    def local_of(ids, pca):  # noqa: ANN001, ANN202
        return {i: feats[i] for i in ids}

    plain = dd.duplicates(Store(), vec, object(), local_of)  # type: ignore[arg-type]
    loose = dd.duplicates(Store(), vec, object(), local_of, DedupeOptions(similar=True))  # type: ignore[arg-type]
    assert [(g.kind, [m.id for m in g.members]) for g in plain.groups] == [("near", [1, 2])]
    assert [(g.kind, [m.id for m in g.members]) for g in loose.groups] == [("near", [1, 2]), ("similar", [1, 2, 3])]
    assert plain.candidates == 6 and plain.unverifiable == 0
    without_4 = dd.duplicates(Store(), vec, object(),  # type: ignore[arg-type]
                              lambda ids, pca: {i: feats[i] for i in ids if i != 4})
    assert without_4.unverifiable == 3 and [len(g.members) for g in without_4.groups] == [2]  # its 3 pairs


def test_group_checks_itself():
    m = [ImageFacts(1, "/a.jpg", 20, 10, 5, None), ImageFacts(2, "/b.jpg", 10, 10, 1, None)]
    dd.Group("near", tuple(m), (dd.Link(1, 2, "near"),))
    with pytest.raises(ValueError, match="keep order"):
        dd.Group("near", tuple(reversed(m)), ())
    with pytest.raises(ValueError, match="two or more"):
        dd.Group("exact", (m[0],), ())
    with pytest.raises(ValueError, match="unknown group kind"):
        dd.Group("maybe", tuple(m), ())


def test_store_hash_queries(planted):
    with Index.open(planted["index"]) as idx:
        shared = idx.store.ids_by_hash()
        assert sorted(len(v) for v in shared.values()) == [2, 2]
        some = next(iter(shared))
        assert idx.store.ids_by_hash([some, "0" * 64]) == {some: shared[some]}
        facts = idx.store.facts(shared[some])
    assert {f.sha256 for f in facts.values()} == {some} and all(f.width and f.height for f in facts.values())


# --- retrieve dedupe ----------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()}


def test_cli_table_names_groups_keepers_and_touches_nothing(planted):
    before = _files(planted["photos"])
    r = run("dedupe", "--index", str(planted["index"]))
    assert r.exit_code == 0, r.output
    assert "group 1: near, 6 images" in r.stdout and "group 2: exact, 2 images" in r.stdout
    keep_lines = [line for line in r.stdout.splitlines() if line.lstrip().startswith("keep")]
    assert [Path(line.split()[-1]).name for line in keep_lines] == ["p0.jpg", "p1.jpg"]
    assert "same bytes" in r.stdout and "Nothing was deleted or moved" in r.stderr
    assert _files(planted["photos"]) == before


def test_cli_json_and_csv(planted):
    r = run("dedupe", "--index", str(planted["index"]), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [(g["kind"], Path(g["keep"]).name, len(g["members"])) for g in data["groups"]] == [
        ("near", "p0.jpg", 6), ("exact", "p1.jpg", 2)]
    assert all(set(x) >= {"a", "b", "kind", "inliers", "coverage"} for g in data["groups"] for x in g["links"])
    r = run("dedupe", "--index", str(planted["index"]), "--csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 8 and [row["role"] for row in rows].count("keep") == 2
    assert {row["kind"] for row in rows} == {"near", "exact"} and all(row["sha256"] for row in rows)


def test_cli_folder_against_the_index(planted, tmp_path):
    card = tmp_path / "card"
    card.mkdir()
    shutil.copy(planted["photos"] / "p4.jpg", card / "a.jpg")
    synth_photo(55, (320, 240)).save(card / "b.jpg", quality=90)
    r = run("dedupe", str(card), "--index", str(planted["index"]), "--json")
    assert r.exit_code == 0, r.output
    got = {Path(a["path"]).name: (a["kind"], a["indexed"] and Path(a["indexed"]).name) for a in json.loads(r.stdout)}
    assert got == {"a.jpg": ("exact", "p4.jpg"), "b.jpg": ("new", None)}
    assert "1 of 2 files are already in the index" in r.stderr


def test_cli_html_contact_sheet(planted, tmp_path):
    out = tmp_path / "sheet"
    r = run("dedupe", "--index", str(planted["index"]), "--html", str(out))
    assert r.exit_code == 0, r.output
    page = (out / "index.html").read_text()
    assert "group 1: near, 6 images" in page and "random weights" in page
    pictures = sorted(p.name for p in out.glob("g*_l*.png"))
    assert pictures and all(f'src="{name}"' in page for name in pictures)  # one per non-exact link
    assert len(list(out.glob("g*_m*.png"))) == 8  # one per member


@pytest.mark.parametrize(("args", "named"), [(["--coverage", "0"], "--coverage"), (["--json", "--csv"], "--csv"),
                                             (["--threshold", "2"], "--threshold")])
def test_cli_refuses_bad_options_in_one_line(planted, args, named):
    r = run("dedupe", "--index", str(planted["index"]), *args)
    assert r.exit_code == 2 and clean_exit(r), r.output
    one_line_error(r)
    assert named in r.stderr


@pytest.mark.parametrize(("option", "field", "value"), [
    ("--threshold", "threshold", -1.0), ("--threshold", "threshold", 1.0), ("--threshold", "threshold", -1.0001),
    ("--threshold", "threshold", 1.0001), ("--coverage", "coverage", 0.0), ("--coverage", "coverage", 1e-9),
    ("--coverage", "coverage", 1.0), ("--coverage", "coverage", 1.0001), ("-k", "k", 1), ("-k", "k", 0)])
def test_cli_bounds_are_dedupe_options_bounds(option, field, value):
    """A value `retrieve dedupe` parses is one DedupeOptions takes, and the other way round, at each end."""
    command = typer.main.get_command(app).commands["dedupe"]  # parsing alone: no index is opened
    try:
        command.make_context("dedupe", [option, str(value)])
        parsed = True
    except typer.BadParameter:
        parsed = False
    try:
        DedupeOptions(**{field: value})
        taken = True
    except UsageError:
        taken = False
    assert parsed == taken, (option, value, parsed, taken)


def test_cli_html_is_for_the_index_groups_only(planted, tmp_path):
    r = run("dedupe", str(planted["photos"]), "--index", str(planted["index"]), "--html", str(tmp_path / "sheet"))
    assert r.exit_code == 2 and clean_exit(r), r.output
    one_line_error(r, "--html")
    assert not (tmp_path / "sheet").exists()


# --- GET /api/duplicates -------------------------------------------------------------------------

def test_api_duplicates_answers_the_groups_and_sends_big_indexes_to_the_command(planted, monkeypatch):
    from starlette.testclient import TestClient

    from retrieval.serve import app as serve_app
    from retrieval.serve import create_app

    with TestClient(create_app(planted["index"]), base_url="http://127.0.0.1") as c:
        r = c.get("/api/duplicates")
        assert r.status_code == 200, r.text
        data = r.json()
        copies = [g for g in data["groups"] if g["kind"] != "similar"]
        assert [(g["kind"], Path(g["keep"]).name, len(g["members"])) for g in copies] == [
            ("near", "p0.jpg", 6), ("exact", "p1.jpg", 2)]
        keeper = copies[0]["members"][0]
        assert c.get(f"/api/images/{keeper['id']}").status_code == 200  # members' ids are the image route's
        monkeypatch.setattr(serve_app, "MAX_DEDUPE_IMAGES", 5)
        r = c.get("/api/duplicates")
        assert r.status_code == 409 and "retrieve dedupe" in r.json()["error"] and "\n" not in r.json()["error"]

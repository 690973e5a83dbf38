"""Correspondence maps, re-ranking and the visual outputs."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval.cli import app
from retrieval.config import ImageConfig, SearchOptions
from retrieval.engine import Index
from retrieval import visualize
from retrieval.engine.maps import caption, model_label, pair, render, view
from retrieval.local import grid_xy, unpack
from retrieval.rerank import MIN_INLIERS, rerank_order, verify

from .conftest import synth_photo
from .helpers import TINY_CONFIG, make_folder

runner = CliRunner()


def test_patch_aligned_shift_matches_map_back(tmp_path, tiny):
    base = synth_photo(11, (448, 336))
    a_path, b_path = tmp_path / "a.png", tmp_path / "b.png"
    base.save(a_path)
    base.crop((28, 42, 448, 336)).save(b_path)  # 2 patches left, 3 patches up; 420 x 294 = 30 x 21 patches
    a = view(a_path, backbone=tiny, image=ImageConfig(size=448))
    b = view(b_path, backbone=tiny, image=ImageConfig(size=420))
    assert a.grid == (24, 32) and b.grid == (21, 30)
    p = pair(a, b)
    v = p.verification
    overlap = 21 * 30
    assert v.n_inliers >= 0.5 * overlap  # random weights, yet near-perfect for aligned shifts
    np.testing.assert_allclose(v.model, [[1, 0, -2], [0, 1, -3]], atol=0.1)
    xa = grid_xy(a.grid)[v.matches.ia[v.inliers]]
    xb = grid_xy(b.grid)[v.matches.ib[v.inliers]]
    assert np.abs(xa - [2, 3] - xb).max() <= 1.0  # every inlier within a patch of where the shift says


def test_rerank_reorders_only_by_its_score(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(12))
    base = Image.open(files[4])
    base.crop((14, 14, 160, 120)).save(photos / "img_crop.png")  # a near copy of img_004
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "image": {"size": 224}}) as idx:
        idx.update([photos])
        plain = idx.search(files[4], SearchOptions(k=13))
        reranked = idx.search(files[4], SearchOptions(k=5, rerank=True, rerank_k=13))
        assert reranked.reranked and all(h.inliers is not None for h in reranked.hits)
        by_id = {h.id: h for h in plain.hits}
        # inlier counts computed here, independently of search(): stored local features vs the query's
        query = idx.queries([files[4]])[0]
        q_patches, q_grid = query.patches, query.grid
        pca = idx.local_pca()
        stored = idx.store.local([h.id for h in plain.hits])
        inl = {}
        for h in plain.hits:
            c = unpack(*stored[h.id][:2], stored[h.id][2], pca.dim)
            inl[h.id] = verify(pca.project(q_patches), grid_xy(q_grid), c.feats.astype(np.float32), c.xy).n_inliers
        crop_id = next(h.id for h in plain.hits if h.path.endswith("img_crop.png"))
        others = [n for i, n in inl.items() if i not in (crop_id, reranked.hits[0].id)]
        assert inl[crop_id] >= MIN_INLIERS > max(others)  # the near copy is verified, unrelated ones are not
        order = rerank_order([h.score for h in plain.hits], [inl[h.id] for h in plain.hits])
        assert [h.id for h in reranked.hits] == [plain.hits[i].id for i in order[:5]]
        assert [h.inliers for h in reranked.hits] == [inl[plain.hits[i].id] for i in order[:5]]
        assert all(abs(h.score - by_id[h.id].score) < 1e-5 for h in reranked.hits)  # scores untouched
        assert reranked.hits[0].path == str(files[4])
        # stored local descriptors give the same counts as recomputing them from the files
        idx.store.db.execute("UPDATE images SET local_feats = NULL, local_coords = NULL")
        again = idx.search(files[4], SearchOptions(k=5, rerank=True, rerank_k=13))
        assert [(h.id, h.inliers) for h in again.hits] == [(h.id, h.inliers) for h in reranked.hits]


def test_query_expansion_and_dba(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(8))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        plain = idx.search(files[0], SearchOptions(k=8))
        qe = idx.search(files[0], SearchOptions(k=8, qe=2))
        assert qe.hits[0].path == str(files[0]) and [h.score for h in qe.hits] != [h.score for h in plain.hits]
        v1 = idx.ensure_vectors().faiss_index.reconstruct(plain.hits[0].id)
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "index": {"dba": 2}}) as idx:
        assert idx.info().vector_index.fresh is False  # a DBA change is a different vector index
        v2 = idx.ensure_vectors().faiss_index.reconstruct(plain.hits[0].id)
        assert not np.allclose(v1, v2) and abs(np.linalg.norm(v2) - 1) < 1e-5


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.sections = 0
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag == "section":
            self.sections += 1
        if tag not in ("img", "meta"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"


def test_query_out_writes_complete_page(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(5))
    ix, out = tmp_path / "ix", tmp_path / "maps"
    r = runner.invoke(app, ["index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "112",
                            "--workers", "0"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["query", str(files[1]), "--index", str(ix), "-k", "3", "--rerank", "--out", str(out),
                            "--json", "--max-lines", "10"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and all("inliers" in h for h in hits)
    page = _Page()
    page.feed((out / "index.html").read_text())
    page.close()
    assert page.sections == 3 and not page.open
    assert len(page.imgs) == 1 + 3 * 3
    for src in page.imgs:
        assert not Path(src).is_absolute()
        with Image.open(out / src) as im:
            assert im.format == "PNG" and im.width > 0
    assert sorted(p.name for p in out.iterdir()) == sorted({*page.imgs, "index.html"})


def _match(tmp_path, a, b, *extra):
    out = tmp_path / "pair.png"
    r = runner.invoke(app, ["match", str(a), str(b), "--model", "test_tiny", "--size", "224", "--out", str(out),
                            *extra])
    assert r.exit_code == 0, r.output
    matches, inliers = (int(x) for x in r.stdout.split(" matches, ")[0:1] + [r.stdout.split(", ")[1].split()[0]])
    return out, matches, inliers


def test_match_command(tmp_path):
    a = tmp_path / "a.png"
    synth_photo(3, (224, 168)).save(a)
    Image.open(a).crop((28, 0, 224, 168)).save(tmp_path / "b.png")
    out, matches, inliers = _match(tmp_path, a, tmp_path / "b.png")
    assert MIN_INLIERS <= inliers <= matches
    for name in ("pair.png", "pair_heatmap.png", "pair_pca.png"):
        assert Image.open(tmp_path / name).format == "PNG"
    with Image.open(out) as im:  # the caption's text travels in the file too
        said = im.text["Description"]
        assert f"{matches} matches, {inliers} inliers: verified" in said and "test_tiny (random weights)" in said
        assert "similarity" not in said  # no index, no comparable score (docs/decisions.md)
        assert im.width >= 2 * visualize.DISPLAY_SIDE  # small inputs are shown at a readable size
    # two unrelated pictures: few matches, and the caption says they are not verified
    synth_photo(40, (224, 168)).save(tmp_path / "c.png")
    out, matches, inliers = _match(tmp_path, a, tmp_path / "c.png", "--max-lines", "3", "--show-outliers")
    assert inliers < MIN_INLIERS
    with Image.open(out) as im:
        assert f"{matches} matches, {inliers} inliers: not verified" in im.text["Description"]
    r = runner.invoke(app, ["match", str(a), str(a), "--model", "test_tiny", "--out", str(out), "--max-lines", "-1"])
    assert r.exit_code != 0 and "max-lines" in r.output


def _shift_pair(tmp_path, tiny):
    base = synth_photo(12, (448, 336))
    base.save(tmp_path / "a.png")
    base.crop((28, 42, 448, 336)).save(tmp_path / "b.png")
    return pair(view(tmp_path / "a.png", backbone=tiny, image=ImageConfig(size=448)),  # patch-aligned shift
                view(tmp_path / "b.png", backbone=tiny, image=ImageConfig(size=420)))


def test_rendered_pictures_keep_the_images_visible(tmp_path, tiny):
    p = _shift_pair(tmp_path, tiny)
    assert p.n_inliers > 3 * visualize.MAX_LINES  # a good match: many more inliers than lines
    text = caption(p, model=model_label(tiny), score=0.9, rank=1)
    assert text[:2] == ["#1", "similarity 0.9000"]
    assert f"{p.n_matches} matches, {p.n_inliers} inliers: verified" in text[2] and "random weights" in text[3]
    pics = render(p, patch_size=tiny.patch_size, text=text)
    lay = visualize.layout(p.a.display.size, p.b.display.size)
    plain = visualize.compose(p.a.display, p.b.display, lay)
    for kind in ("matches", "heatmap"):
        for x, y, w, h in lay.boxes:
            got = np.asarray(pics[kind].crop((x, y, x + w, y + h)).convert("L"), np.int16)
            want = np.asarray(plain.crop((x, y, x + w, y + h)).convert("L"), np.int16)
            assert (np.abs(got - want) <= 6).mean() >= 0.7, kind
            assert max(w, h) >= visualize.DISPLAY_SIDE
    # the lines drawn are the ones choose_lines picks over the inliers' query positions
    m, inl = p.verification.matches, p.verification.inliers
    xy = grid_xy(p.a.grid)[m.ia[inl]] * tiny.patch_size
    chosen = visualize.choose_lines(xy, m.sim[inl], size=p.a.picture.size)
    assert 0.6 * visualize.MAX_LINES <= len(chosen) <= visualize.MAX_LINES


def test_view_display_is_sharp_and_readable(tmp_path, tiny):
    big = synth_photo(13, (1600, 1200))
    big.save(tmp_path / "big.jpg", quality=95)
    v = view(tmp_path / "big.jpg", backbone=tiny, image=ImageConfig(size=112))
    assert v.picture.size == (112, 84)  # the model saw the usual small input (a reduced JPEG decode)
    assert v.display.size == (visualize.DISPLAY_SIDE, 384)
    ref = Image.open(tmp_path / "big.jpg").convert("RGB").resize(v.display.size, Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(v.display, np.int16) - np.asarray(ref, np.int16)).mean() < 2  # not an upscaled thumbnail
    synth_photo(14, (200, 150)).save(tmp_path / "small.png")
    assert view(tmp_path / "small.png", backbone=tiny, image=ImageConfig(size=112)).display.size == (200, 150)
    boxed = view(tmp_path / "big.jpg", backbone=tiny, image=ImageConfig(size=112), bbox=(100, 100, 900, 500))
    assert boxed.display.size == (visualize.DISPLAY_SIDE, 256)


def test_rerank_needs_sane_arguments(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(2))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        with pytest.raises(ValueError):
            idx.search(files[0], SearchOptions(rerank=True, rerank_k=0))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_query_expansion_with_approximate_kinds(tmp_path, kind):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(6))
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "index": {"kind": kind}}) as idx:
        idx.update([photos])
        assert idx.ensure_vectors().kind == kind
        hits = idx.search(files[2], SearchOptions(k=3, qe=2)).hits
        assert hits[0].path == str(files[2]) and len(hits) == 3


def test_rerank_k_limits_what_is_verified(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(8))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        plain = idx.search(files[0], SearchOptions(k=8))
        hits = idx.search(files[0], SearchOptions(k=8, rerank=True, rerank_k=3)).hits
        assert all(h.inliers is not None for h in hits[:3]) and all(h.inliers is None for h in hits[3:])
        assert [h.id for h in hits[3:]] == [h.id for h in plain.hits[3:]]


def test_tiny_images_index_and_rerank(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(3), size=(60, 40))
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "image": {"size": 14}}) as idx:  # 1x1 patch grid
        idx.update([photos])
        assert idx.store.count("ok") == 3 and idx.local_pca() is None  # too few patches to learn a PCA
        assert idx.search(files[1], SearchOptions(k=3, rerank=True)).hits[0].inliers is not None


def test_maps_survive_a_missing_result(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(3))
    ix, out = tmp_path / "ix", tmp_path / "maps"
    runner.invoke(app, ["index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "112",
                        "--workers", "0"])
    files[2].write_bytes(b"damaged since it was indexed")  # still listed; its maps cannot be drawn
    query = tmp_path / "q.png"
    Image.open(files[0]).save(query)
    r = runner.invoke(app, ["query", str(query), "--index", str(ix), "-k", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert str(files[2]) in r.stdout  # the results are printed
    assert "no maps" in (out / "index.html").read_text()

"""DINOv3 (patch 16) through the whole engine with the random `test_tiny_v3` backbone: index,
query --rerank, match, extract, eval, serve and the Ray decoder resize to multiples of 16 and
place patch centres 16 px apart; an index refuses another backbone family in one line; a random
checkpoint in Meta's key layout goes through `--weights` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from retrieval import Index
from retrieval.backbone import patch_size, registry
from retrieval.images import target_size

from .conftest import ROOT, synth_photo
from .helpers import error_lines, make_photos, run

V3 = ["--model", "test_tiny_v3", "--size", "112", "--workers", "0", "--batch", "4"]
EXACT = (112, 80)  # at --size 112 and patch 16 the model sees this picture unscaled (with 14: 112 x 84)


@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("v3")
    photos = root / "photos"
    make_photos(photos, range(6))  # 160 x 120
    synth_photo(50, EXACT).save(photos / "exact.png")
    r = run("index", str(photos), "--index", str(root / "index"), *V3)
    assert r.exit_code == 0, r.output
    return {"root": root, "photos": photos, "index": root / "index", "exact": photos / "exact.png"}


def test_patch_size_comes_from_the_registry_row():
    assert patch_size("test_tiny_v3") == patch_size("dinov3_vitb16") == 16
    assert patch_size("test_tiny") == patch_size("dinov2_vits14_reg") == 14
    assert all(patch_size(n) == a.patch_size for n, a in registry().items())
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        patch_size("nope")


def test_index_records_its_backbone_and_query_reranks_with_maps(v3, tmp_path):
    with Index.open(v3["index"]) as idx:
        assert idx.config.backbone.name == "test_tiny_v3" and idx.count() == 7
    r = run("query", str(v3["exact"]), "--index", str(v3["index"]), "--rerank", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert hits[0]["path"] == str(v3["exact"]) and hits[0]["inliers"] >= 6
    out = tmp_path / "maps"
    r = run("query", str(v3["exact"]), "--index", str(v3["index"]), "--rerank", "-k", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert {"index.html", "001_matches.png", "001_heatmap.png", "001_pca.png"} <= {p.name for p in out.iterdir()}


def test_match_draws_the_three_pictures(v3, tmp_path):
    out = tmp_path / "pair.png"
    photos = sorted(v3["photos"].glob("*.jpg"))
    r = run("match", str(photos[0]), str(photos[0]), "--out", str(out), "--model", "test_tiny_v3", "--size", "112")
    assert r.exit_code == 0, r.output
    assert "35 matches" in r.output  # every patch of a 5 x 7 grid (112 x 80 at patch 16) with itself
    for name in ("pair.png", "pair_heatmap.png", "pair_pca.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_extract_grid_times_16_is_the_resized_input_and_storage_tokens_have_their_key(tmp_path):
    wide, usual = tmp_path / "wide.png", tmp_path / "usual.png"
    synth_photo(1, (500, 200)).save(wide)  # 112 x 48 at patch 16; 112 x 42 (a 2 x 7 grid) at patch 14
    synth_photo(2, (160, 120)).save(usual)
    out = tmp_path / "f.npz"
    r = run("extract", str(wide), str(usual), "--out", str(out), "--model", "test_tiny_v3", "--size", "112",
            "--workers", "0")
    assert r.exit_code == 0, r.output
    f = np.load(out)
    for i, (w, h) in enumerate([(500, 200), (160, 120)]):
        assert tuple(f["grid"][i] * 16) == target_size(w, h, size=112, patch_size=16)[::-1]
    assert [tuple(g) for g in f["grid"]] == [(3, 7), (5, 7)]
    assert f["storage"].shape == (2, 4, 32) and "registers" not in f
    assert not np.allclose(f["storage"][:, 0], f["cls"])  # the tokens after the class token, not a copy of it


def test_pca_picture_of_a_dinov3_model(tmp_path):
    src = tmp_path / "a.png"
    synth_photo(3, (160, 120)).save(src)
    out = tmp_path / "pca.png"
    r = run("pca", str(src), "--out", str(out), "--model", "test_tiny_v3", "--size", "112", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert Image.open(out).format == "PNG"


def test_storage_tokens_are_the_models_tokens_after_the_class_token():
    from retrieval import load_backbone

    bb = load_backbone("test_tiny_v3", device="cpu")
    x = torch.randn(2, 3, 48, 64)
    t = bb.encode(x)
    full = bb.vit.tokens(x.float())
    assert t.registers is not None and torch.equal(t.registers, full[:, 1:5]) and torch.equal(t.cls, full[:, 0])


@pytest.mark.subprocess
def test_eval_on_a_json_ground_truth(tmp_path):
    script = str(ROOT / "scripts" / "make_synthetic_benchmark.py")
    subprocess.run([sys.executable, script, str(tmp_path), "--landmarks", "2", "--distractors", "2"], check=True)
    out = tmp_path / "m.json"
    r = run("eval", str(tmp_path / "synthetic.json"), "--index", str(tmp_path / "ix"), *V3, "--rerank",
            "--json-out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["config"]["backbone"] == "test_tiny_v3" and set(report["all"]) == {"mAP", "mP@1", "mP@5", "mP@10"}


def test_serve_search_and_matches_place_patch_centres_16_px_apart(v3):
    from retrieval.serve import create_app

    with TestClient(create_app(v3["index"]), base_url="http://127.0.0.1") as c:
        with open(v3["exact"], "rb") as f:
            body = c.post("/api/search", files={"image": ("q.png", f, "image/png")}, data={"k": "3"}).json()
        top = body["hits"][0]
        assert top["path"] == str(v3["exact"])
        data = c.get(f"/api/queries/{body['query']}/matches/{top['id']}").json()
        assert data["inliers"] >= 6 and data["query_size"] == list(EXACT) == data["size"]
        xy = np.array(data["pairs"])
        assert np.all((xy - 8) % 16 == 0)  # centres of 16-px patches in the unscaled pictures
        assert set(xy[:, 0]) <= {8 + 16 * i for i in range(7)} and set(xy[:, 1]) <= {8 + 16 * i for i in range(5)}
        png = c.get(f"/api/queries/{body['query']}/matches/{top['id']}?format=png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_ray_decoder_resizes_to_the_backbones_patch_multiple(v3, monkeypatch):
    from retrieval.config import EngineConfig
    from retrieval.engine import distributed

    monkeypatch.setattr(distributed, "_cores", lambda: 1)
    paths = [v3["exact"], *sorted(v3["photos"].glob("*.jpg"))[:1]]
    batch = {"index": np.arange(2), "path": np.array([str(p).encode() for p in paths], dtype=object)}
    for name, want in (("test_tiny_v3", [(80, 112), (80, 112)]), ("test_tiny", [(84, 112), (84, 112)])):
        config = EngineConfig.from_dict({"backbone": {"name": name}, "image": {"size": 112}})
        out = distributed.decode_batch(batch, config=config)
        assert list(zip(out["h0"], out["w0"])) == want


def test_another_family_into_an_index_is_refused_in_one_line(v3):
    r = run("index", str(v3["photos"]), "--index", str(v3["index"]), "--model", "test_tiny", "--size", "112",
            "--workers", "0")
    assert r.exit_code == 1
    lines = error_lines(r)
    assert len(lines) == 1, r.output
    assert "test_tiny_v3 (DINOv3, patch 16)" in lines[0] and "test_tiny (DINOv2, patch 14)" in lines[0]
    assert "fix: use another index folder for it (`--index FOLDER`)" in lines[0]
    with Index.open(v3["index"]) as idx:
        assert idx.config.backbone.name == "test_tiny_v3" and idx.count() == 7


@pytest.fixture(scope="module")
def meta_file(tmp_path_factory) -> Path:
    """A random ViT-S/16 at full depth, made by Meta's own hub factory and saved in its key layout
    (periods in bf16), as the official `dinov3_vits16_pretrain_lvd1689m-*.pth` is."""
    from .dinov3_reference import official_model, official_state_dict

    path = tmp_path_factory.mktemp("meta") / "dinov3_vits16_random.pth"
    torch.save(official_state_dict(official_model("dinov3_vits16", seed=5)), path)
    return path


@pytest.mark.subprocess
def test_a_checkpoint_in_metas_layout_through_every_command(meta_file, tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, range(4))
    synth_photo(60, (64, 48)).save(photos / "exact.png")  # 64 x 48 at --size 64: unscaled, a 3 x 4 grid
    model = ["--model", "dinov3_vits16", "--weights", str(meta_file), "--size", "64"]
    ix = tmp_path / "ix"
    r = run("index", str(photos), "--index", str(ix), *model, "--workers", "0")
    assert r.exit_code == 0, r.output
    r = run("query", str(photos / "exact.png"), "--index", str(ix), "--rerank", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["path"] == str(photos / "exact.png")
    r = run("match", str(photos / "exact.png"), str(photos / "exact.png"), "--out", str(tmp_path / "m.png"), *model)
    assert r.exit_code == 0 and "12 matches" in r.output, r.output
    from retrieval.serve import create_app

    with TestClient(create_app(ix), base_url="http://127.0.0.1") as c:
        with open(photos / "exact.png", "rb") as f:
            body = c.post("/api/search", files={"image": ("q.png", f, "image/png")}, data={"k": "2"}).json()
        assert body["hits"][0]["path"] == str(photos / "exact.png")
        data = c.get(f"/api/queries/{body['query']}/matches/{body['hits'][0]['id']}").json()
        assert np.all((np.array(data["pairs"]) - 8) % 16 == 0)
    script = str(ROOT / "scripts" / "make_synthetic_benchmark.py")
    subprocess.run([sys.executable, script, str(tmp_path / "gt"), "--landmarks", "2", "--distractors", "1"],
                   check=True)
    out = tmp_path / "m.json"
    r = run("eval", str(tmp_path / "gt" / "synthetic.json"), "--index", str(tmp_path / "eval"), *model,
            "--workers", "0", "--json-out", str(out))
    assert r.exit_code == 0, r.output
    cfg = json.loads(out.read_text())["config"]
    assert cfg["backbone"] == "dinov3_vits16" and cfg["weights_id"].startswith("sha256:")

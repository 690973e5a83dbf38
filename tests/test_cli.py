from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from retrieval.cli import app
from retrieval.images import preprocess

runner = CliRunner()
COMMANDS = ["index", "query", "info", "remove", "eval", "extract", "pca", "models"]


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_models_lists_registry():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "dinov2_vitg14_reg" in result.output and "dinov2_vitg14_reg4_pretrain.pth" in result.output


@pytest.mark.parametrize("workers", ["0", "1"])
def test_extract_writes_documented_npz(photos, tmp_path, tiny, awkward_dir, workers):
    bad = tmp_path / "broken.jpg"
    shutil.copy(awkward_dir / "jpeg_truncated_baseline_photo.jpg", bad)
    out = tmp_path / "f.npz"
    args = ["extract", *map(str, photos), str(bad), "--model", "test_tiny", "--size", "224", "--out", str(out),
            "--batch", "3", "--workers", workers]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 images" in result.output and "1 skipped" in result.output
    f = np.load(out)
    assert list(f["paths"]) == [str(p) for p in photos]
    assert list(f["skipped_paths"]) == [str(bad)] and "truncated" in f["skipped_reasons"][0]
    assert f["cls"].shape == (4, tiny.dim) and f["offsets"][-1] == f["patches"].shape[0]
    assert str(f["model"]) == "test_tiny" and int(f["input_size"]) == 224
    for i, p in enumerate(photos):
        x, original = preprocess(p, size=224, patch_size=14, mean=tiny.mean, std=tiny.std)
        want = tiny.encode(torch.from_numpy(x)[None])
        h, w = f["grid"][i]
        assert (h, w) == want.grid and tuple(f["size"][i]) == original
        got = f["patches"][f["offsets"][i]:f["offsets"][i + 1]]
        np.testing.assert_allclose(got, want.patches[0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(f["cls"][i], want.cls[0].numpy(), rtol=1e-4, atol=1e-4)


def test_extract_folder_input(photos, tmp_path):
    out = tmp_path / "f.npz"
    result = runner.invoke(app, ["extract", str(photos[0].parent), "--model", "test_tiny", "--size", "112",
                                 "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert len(np.load(out)["paths"]) == len(photos)


def test_pca_writes_png(photos, tmp_path):
    out = tmp_path / "sub" / "pca.png"
    result = runner.invoke(app, ["pca", *map(str, photos[:2]), "--model", "test_tiny", "--size", "224",
                                 "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    im = Image.open(out)
    assert im.format == "PNG" and im.height > 2 * 200
    assert [p.name for p in out.parent.iterdir()] == ["pca.png"]  # no temp files left


def test_unknown_model_one_line_error(photos, tmp_path):
    result = runner.invoke(app, ["extract", str(photos[0]), "--model", "nope", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown backbone 'nope'" in lines[0] and "dinov2_vits14" in lines[0]


def test_all_bad_inputs_is_an_error(awkward_dir, tmp_path):
    out = tmp_path / "x.npz"
    result = runner.invoke(app, ["extract", str(awkward_dir / "zero_bytes.jpg"), "--model", "test_tiny",
                                 "--out", str(out), "--workers", "0"])
    assert result.exit_code == 1 and not out.exists()
    assert "no image could be embedded" in result.output


def test_empty_folder_is_an_error(tmp_path):
    result = runner.invoke(app, ["pca", str(tmp_path), "--model", "test_tiny", "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 1 and "no image files" in result.output


def test_bad_threshold(photos, tmp_path):
    result = runner.invoke(app, ["pca", str(photos[0]), "--model", "test_tiny", "--threshold", "2",
                                 "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "--threshold" in result.output


def _run(args, env_index):
    return runner.invoke(app, args, env={"RETRIEVAL_INDEX": str(env_index)})


def test_index_then_query_with_no_flags(photos, tmp_path, awkward_dir):
    ix = tmp_path / "default-index"
    shutil.copy(awkward_dir / "zero_bytes.jpg", photos[0].parent / "zero.jpg")
    r = _run(["index", str(photos[0].parent), "--model", "test_tiny", "--size", "112", "--workers", "0"], ix)
    assert r.exit_code == 0, r.output
    assert "4 images indexed" in r.output and "added 4" in r.output and "skipped 1" in r.output
    assert "zero.jpg" in r.output  # the skip is reported with its reason
    q = _run(["query", str(photos[2]), "-k", "3", "--json"], ix)
    assert q.exit_code == 0, q.output
    hits = json.loads(q.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(photos[2].resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(Path(h["path"]).is_absolute() for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    table = _run(["query", str(photos[2]), "-k", "2", "--bbox", "10,10,200,150"], ix)
    assert table.exit_code == 0 and "rank" in table.output
    info = json.loads(_run(["info", "--json"], ix).stdout)
    assert info["images"] == 4 and info["skipped"][0]["path"].endswith("zero.jpg") and info["skipped"][0]["reason"]
    again = _run(["index", str(photos[0].parent)], ix)
    assert "unchanged 4" in again.output and "still refused 1" in again.output and "added 0" in again.output
    rm = _run(["remove", str(photos[3])], ix)
    assert rm.exit_code == 0 and "removed 1" in rm.output
    assert json.loads(_run(["info", "--json"], ix).stdout)["images"] == 3
    assert "images       3 indexed" in _run(["info"], ix).output


def test_query_errors_are_one_line(photos, tmp_path, awkward_dir):
    missing = _run(["query", str(photos[0])], tmp_path / "nothing-here")
    assert missing.exit_code == 1 and "no index at" in missing.output
    assert len([x for x in missing.output.splitlines() if x.strip()]) == 1
    ix = tmp_path / "ix"
    _run(["index", str(photos[0].parent), "--model", "test_tiny", "--size", "112", "--workers", "0"], ix)
    bad = _run(["query", str(awkward_dir / "png_truncated.png")], ix)
    assert bad.exit_code == 1 and "png_truncated.png" in bad.output and "fix:" in bad.output
    box = _run(["query", str(photos[0]), "--bbox", "1,2,3"], ix)
    assert box.exit_code == 2 and "x1,y1,x2,y2" in box.output
    other = _run(["index", str(photos[0].parent), "--size", "224"], ix)
    assert other.exit_code == 1 and "another --index" in other.output

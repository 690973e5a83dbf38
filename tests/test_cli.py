from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
import typer.main
from PIL import Image
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app, verbose_first
from retrieval.images import load_image, normalize, preprocess, resize_for_model

runner = CliRunner()


def _commands() -> dict[str, Any]:
    """The commands the app registers, as typer builds them (not a hand-written list)."""
    commands = dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert len(commands) == len(app.registered_commands) >= 9
    return commands


def test_every_command_has_help():
    for flag in ("--help", "-h"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0 and "Usage" in result.output
        for name in _commands():
            assert name in result.output
            sub = runner.invoke(app, [name, flag])
            assert sub.exit_code == 0 and "Usage" in sub.output, (name, flag, sub.output)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"retrieve {retrieval.__version__}\n"


def test_flags_show_no_value_placeholder():
    for name, command in _commands().items():
        text = runner.invoke(app, [name, "-h"], env={"COLUMNS": "200"}).output
        assert "<bool>" not in text and "BOOLEAN" not in text, name
        for p in command.params:  # options that take a value still name it
            if not getattr(p, "is_flag", False) and p.param_type_name == "option":
                assert p.metavar, (name, p.name)
    assert "--batch N " in runner.invoke(app, ["index", "-h"], env={"COLUMNS": "200"}).output
    assert "<bool>" not in runner.invoke(app, ["-h"]).output


def test_defaults_shown_one_way():
    """Literal defaults through typer's [default: X]; a "(default: ...)" phrase only where the
    default is computed (the parameter's own default is None)."""
    for name, command in _commands().items():
        for p in command.params:
            text = getattr(p, "help", None) or ""
            assert "(default " not in text and "Default:" not in text and "(default)" not in text, (name, p.name)
            if "(default:" in text:
                assert p.default is None, (name, p.name, p.default)
    extract = runner.invoke(app, ["extract", "-h"], env={"COLUMNS": "200"}).output
    assert "[default: 16]" in extract and "(default: cuda when present)" in extract


def test_every_out_has_short_form():
    outs = {name: p.opts for name, c in _commands().items() for p in c.params if "--out" in p.opts}
    assert {"extract", "pca", "query", "match"} <= set(outs)
    assert all("-o" in opts for opts in outs.values()), outs


@pytest.mark.parametrize("args", [["-v", "models"], ["models", "-v"], ["models", "--verbose"]])
def test_verbose_before_or_after_the_command(args):
    logger = logging.getLogger("retrieval")
    assert runner.invoke(app, ["models"]).exit_code == 0 and logger.level == logging.INFO
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and logger.level == logging.DEBUG
    assert logging.getLogger().level == logging.WARNING  # other libraries' debug output: only with -vv
    runner.invoke(app, ["models"])  # back to the default for the tests that follow


def test_verbose_moves_only_before_a_double_dash():
    commands = _commands()
    assert verbose_first(["index", "d", "-v", "--batch", "2"], commands) == ["-v", "index", "d", "--batch", "2"]
    assert verbose_first(["-k", "x"], commands) == ["-k", "x"]
    assert verbose_first(["index", "d", "--", "-v"], commands) == ["index", "d", "--", "-v"]
    assert verbose_first(["nope", "-v"], commands) == ["nope", "-v"]
    # after `--`, -v is a file name: here it is passed on to `remove` as a path, not taken as a flag
    result = runner.invoke(app, ["remove", "--index", "/nonexistent-index", "--", "-v"])
    assert "no index at" in result.output and logging.getLogger("retrieval").level == logging.INFO


def test_shell_completion_is_on():
    assert "--install-completion" in runner.invoke(app, ["-h"]).output
    env = {"_RETRIEVE_COMPLETE": "complete_bash", "COMP_WORDS": "retrieve ind", "COMP_CWORD": "1"}
    result = runner.invoke(app, [], prog_name="retrieve", env=env)
    assert result.exit_code == 0 and result.output.split() == ["index"]
    env = {"_RETRIEVE_COMPLETE": "complete_bash", "COMP_WORDS": "retrieve query x.jpg --rer", "COMP_CWORD": "3"}
    result = runner.invoke(app, [], prog_name="retrieve", env=env)
    assert sorted(result.output.split()) == ["--rerank", "--rerank-k"]


def test_models_lists_registry():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "dinov2_vitg14_reg" in result.output and "dinov2_vitg14_reg4_pretrain.pth" in result.output


@pytest.mark.parametrize("workers", ["0", pytest.param("1", marks=pytest.mark.subprocess)])  # "1": a decoder process
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
    assert str(f["decode"]) == "exact"
    for i, p in enumerate(photos):  # the README's path: full decode, resize, normalise (photo 3 is > 2 x 224)
        im = load_image(p)
        x = normalize(resize_for_model(im, size=224, patch_size=14), mean=tiny.mean, std=tiny.std)
        want = tiny.encode(torch.from_numpy(x)[None])
        h, w = f["grid"][i]
        assert (h, w) == want.grid and tuple(f["size"][i]) == im.size
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
    assert result.exit_code == 2  # a usage error, as an unknown --pooling is (issue 25 item 7)
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
    assert other.exit_code == 1 and "another index folder" in other.output


def test_size_not_a_multiple_of_14_is_rounded_to_the_nearest(photos, tiny, tmp_path):
    assert "(500 -> 504)" in runner.invoke(app, ["extract", "-h"], env={"COLUMNS": "200"}).output
    out = tmp_path / "f.npz"
    result = runner.invoke(app, ["extract", str(photos[0]), "--model", "test_tiny", "--size", "500",
                                 "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert tuple(np.load(out)["grid"][0]) == (27, 36)  # 320x240 -> 504x378: 500 rounded to 36 patches
    x, _ = preprocess(photos[0], size=500, patch_size=14, mean=tiny.mean, std=tiny.std)
    assert x.shape == (3, 378, 504)  # the Python API rounds the same way


def test_extract_decodes_large_jpegs_in_full_by_default(tmp_path, tiny):
    """A JPEG over twice --size: `extract` gives the official transform's tokens (full decode, resize,
    normalise, model); --draft (the DCT-scaled decode `index` uses) gives different ones."""
    from .conftest import synth_photo

    big = tmp_path / "big.jpg"
    synth_photo(7, (1000, 750)).save(big, quality=90)
    im = load_image(big)  # no min_side_hint: a full decode
    x = normalize(resize_for_model(im, size=224, patch_size=14), mean=tiny.mean, std=tiny.std)
    want = tiny.encode(torch.from_numpy(x)[None])
    got = {}
    for mode in ("exact", "draft"):
        out = tmp_path / f"{mode}.npz"
        flags = [] if mode == "exact" else ["--draft"]  # exact is the default
        result = runner.invoke(app, ["extract", str(big), "--model", "test_tiny", "--size", "224", "--out", str(out),
                                     "--workers", "0", *flags])
        assert result.exit_code == 0, result.output
        got[mode] = np.load(out)
        assert str(got[mode]["decode"]) == mode
        assert tuple(got[mode]["grid"][0]) == want.grid
    np.testing.assert_allclose(got["exact"]["patches"], want.patches[0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["exact"]["cls"][0], want.cls[0].numpy(), rtol=1e-4, atol=1e-4)
    scale = np.abs(want.patches[0].numpy()).max()
    assert np.abs(got["draft"]["patches"] - want.patches[0].numpy()).max() > 100 * 1e-4 * scale

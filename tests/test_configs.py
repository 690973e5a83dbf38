"""The presets installed with the package (retrieval/presets/): they parse, default.toml is the code's defaults, and each one indexes
a folder through `retrieve index --config` with flags winning over the file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval.backbone import native_dtype, resolve_device
from retrieval.cli import app
from retrieval.config import MULTISCALE, EngineConfig, deep_merge, load_config, read_config_file

from .conftest import ROOT, synth_photo

PRESETS = ROOT / "retrieval" / "presets"
CONFIGS = sorted(PRESETS.glob("*.toml"))
runner = CliRunner()


def test_the_promised_presets_exist():
    assert {p.name for p in CONFIGS} >= {"default.toml", "table9-vitl14.toml", "fast-cpu.toml", "gpu-large.toml",
                                         "dinov3-vitl16.toml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_is_a_valid_config(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, EngineConfig)
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg  # round-trips like a stored config


def test_default_toml_is_exactly_the_code_defaults():
    assert load_config(PRESETS / "default.toml").to_dict() == EngineConfig().to_dict()


def _keys_in_file(text: str) -> dict[str, set[str]]:
    """Section -> keys set in the file, including commented-out `# key = value` lines (the settings
    whose default is none, which TOML cannot write)."""
    found: dict[str, set[str]] = {"": set()}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"\[(\w+)\]\s*$", line):
            section = m.group(1)
            found.setdefault(section, set())
        elif m := re.match(r"#?\s?(\w+)\s*=", line):  # at column 0: continuation comments are indented
            found[section].add(m.group(1))
    return found


def test_default_toml_names_every_field_of_every_config_dataclass():
    text = (PRESETS / "default.toml").read_text()
    found = _keys_in_file(text)
    defaults = EngineConfig()
    expected: dict[str, set[str]] = {"": set()}
    for f in dataclasses.fields(EngineConfig):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            expected[f.name] = {g.name for g in dataclasses.fields(value)}
        else:
            expected[""].add(f.name)
    assert found == expected
    # a commented-out line is exactly a setting whose default is None, and every line has a comment
    commented = {(s, k) for s, keys in _keys_in_file("\n".join(line for line in text.splitlines() if line.startswith(("#", "["))))
                 .items() for k in keys}
    nones = {(s, k) for s, keys in expected.items() for k in keys
             if (getattr(defaults, k) if not s else getattr(getattr(defaults, s), k)) is None}
    assert commented == nones
    for line in text.splitlines():
        if re.match(r"#?\s?\w+\s*=", line):
            assert "#" in line.lstrip("#"), f"no comment on: {line}"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "photos"
    out.mkdir()
    for i, size in enumerate([(160, 120), (120, 160), (200, 100)]):
        synth_photo(i, size).save(out / f"p{i}.jpg", quality=90)
    return out


def _info(ix: Path) -> dict:
    r = runner.invoke(app, ["info", "--index", str(ix), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_indexes_a_folder(path: Path, folder: Path, tmp_path: Path):
    """No real weights here: --model test_tiny overrides the file's backbone (flags win); every
    other setting of the file must reach the index's stored config."""
    ix = tmp_path / "index"
    r = runner.invoke(app, ["index", str(folder), "--index", str(ix), "--config", str(path),
                            "--model", "test_tiny", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "3 images indexed" in r.output
    info = _info(ix)
    assert info["images"] == 3
    expected = deep_merge(read_config_file(path), {"backbone": {"name": "test_tiny"}, "workers": 0})
    expected = load_config(**expected).to_dict()
    if expected["backbone"]["dtype"] == "auto":  # an index stores what auto resolved to
        expected["backbone"]["dtype"] = native_dtype(resolve_device(None))
    expected["pooling"]["scales"] = list(expected["pooling"]["scales"])
    assert info["config"] == expected


def test_flags_win_over_the_file_and_the_rest_is_kept(folder: Path, tmp_path: Path):
    ix = tmp_path / "index"
    r = runner.invoke(app, ["index", str(folder), "--index", str(ix), "--config", "gpu-large",
                            "--model", "test_tiny", "--size", "112", "--single-scale", "--batch", "2", "--dtype", "fp32",
                            "--workers", "0"])
    assert r.exit_code == 0, r.output
    cfg = _info(ix)["config"]
    assert cfg["backbone"]["name"] == "test_tiny" and cfg["backbone"]["dtype"] == "fp32"
    assert cfg["image"]["size"] == 112 and cfg["pooling"]["scales"] == [1.0] and cfg["batch"] == 2
    assert cfg["decode"] == "auto" and cfg["pooling"]["pooling"] == "cls+gem"  # not in file nor flags: defaults

    ix2 = tmp_path / "index2"
    r = runner.invoke(app, ["index", str(folder), "--index", str(ix2), "--config", str(PRESETS / "fast-cpu.toml"),
                            "--model", "test_tiny", "--multiscale", "--workers", "0"])
    assert r.exit_code == 0, r.output
    cfg = _info(ix2)["config"]
    assert cfg["image"]["size"] == 224 and cfg["pooling"]["scales"] == pytest.approx(list(MULTISCALE))


def test_misspelt_key_names_the_key_and_the_file(folder: Path, tmp_path: Path):
    bad = tmp_path / "my preset.toml"
    bad.write_text('[backbone]\nname = "test_tiny"\n\n[image]\nsise = 224\n')
    for args in (["index", str(folder), "--index", str(tmp_path / "ix")], ["eval", "x.json"]):
        r = runner.invoke(app, [*args, "--config", str(bad)])
        assert r.exit_code != 0
        line = " ".join(r.output.split())  # rich may wrap a long line on a narrow terminal
        assert "'image.sise'" in line and str(bad) in line and "valid keys: max_pixels, size" in line
        assert "Traceback" not in r.output
    assert not (tmp_path / "ix" / "store.sqlite").exists() or _info(tmp_path / "ix")["images"] == 0


@pytest.mark.parametrize("text,message", [
    ("[image\nsize = 224\n", "is not valid TOML"),
    ("[image]\nsize = \"big\"\n", "'image.size' must be int, got 'big'"),
    ("[image]\nsize = 10\n", "size must be 14 to 4096"),
    ("batch = 2.5\n", "'batch' must be int"),
    ("pooling = \"cls\"\n", "'pooling' must be a table"),
    ("[index]\ndba_alpha = 0\n", "dba_alpha must be positive"),
    ("[whitening]\nmin_images = -1\n", "min_images must be >= 0"),
])
def test_bad_files_are_one_line_errors_naming_the_file(text: str, message: str, folder: Path, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    r = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "ix"), "--config", str(bad)])
    assert r.exit_code == 2, r.output  # a value the user gave: a usage error
    line = " ".join(r.output.split())
    assert line.startswith("error: config file") and str(bad) in line and message in line
    assert "Traceback" not in r.output


def test_a_bad_option_value_names_the_option(folder: Path, tmp_path: Path):
    for args in (["index", str(folder), "--index", str(tmp_path / "ix")], ["eval", "x.json"]):
        r = runner.invoke(app, [*args, "--model", "test_tiny", "--batch", "0"])
        assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == "error: --batch must be >= 1, got 0", r.output
    assert not (tmp_path / "ix").exists()


@pytest.mark.parametrize(("args", "said"), [(["--dba", "-1"], "error: --dba must be >= 0 (0: off), got -1"),
                                            (["--whiten-dim", "-3"], "error: --whiten-dim must be >= 1 (or 0 on the "
                                                                     "command line: keep every dimension), got -3")])
def test_negative_counts_are_refused(folder: Path, tmp_path: Path, args: list[str], said: str):
    r = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "ix"), "--model", "test_tiny", *args])
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == said, r.output
    assert not (tmp_path / "ix").exists()


def test_missing_file_is_one_line(folder: Path, tmp_path: Path):
    r = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "ix"),
                            "--config", str(tmp_path / "nope.toml")])
    assert r.exit_code == 2
    assert "no such file" in r.output and "nope.toml" in r.output

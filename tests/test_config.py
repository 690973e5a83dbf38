from __future__ import annotations

import re
from pathlib import Path

import pytest

from retrieval.config import MULTISCALE, EngineConfig, ImageConfig, cli_overrides, load_config, read_config_file
from retrieval.errors import ConfigError, UsageError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('batch = 4\n[backbone]\nname = "test_tiny"\n[image]\nsize = 224\n')
    cfg = load_config(p, image={"max_pixels": 1000})
    assert cfg.batch == 4 and cfg.backbone.name == "test_tiny"
    assert cfg.image == ImageConfig(size=224, max_pixels=1000)
    assert cfg.backbone.dtype == EngineConfig().backbone.dtype


def test_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[image]\nsise = 224\n")
    with pytest.raises(ValueError, match="image.*sise.*valid keys: max_pixels, size"):
        load_config(p)


def test_invalid_values():
    with pytest.raises(ValueError):
        ImageConfig(size=10)


def test_file_errors_name_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[image]\nsise = 224\n")
    with pytest.raises(ConfigError, match=rf"config file {re.escape(str(p))}: unknown config key 'image.sise'"):
        read_config_file(p)
    p.write_text("[image\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    p.write_text("[pooling]\nscales = [1, \"x\"]\n")
    with pytest.raises(ConfigError, match="'pooling.scales' must be a list of float"):
        load_config(p)


def test_values_are_checked_and_ints_count_as_floats():
    cfg = load_config(pooling={"gem_p": 2, "scales": [1, 2]}, whitening={"dim": 64})
    assert cfg.pooling.gem_p == 2.0 and isinstance(cfg.pooling.gem_p, float) and cfg.pooling.scales == (1.0, 2.0)
    with pytest.raises(ValueError, match="'whitening.enabled' must be bool"):
        load_config(whitening={"enabled": 1})
    with pytest.raises(ValueError, match="'image.size' must be int"):
        load_config(image={"size": True})
    assert EngineConfig.from_dict(EngineConfig().to_dict()) == EngineConfig()


def test_cli_overrides_defaults_then_file_then_flags(tmp_path):
    p = tmp_path / "sub" / "c.toml"
    p.parent.mkdir()
    p.write_text('batch = 4\n[backbone]\nname = "dinov2_vitb14"\nweights = "w/b.pth"\ndtype = "bf16"\n'
                 '[image]\nsize = 224\n[pooling]\nscales = [1.0, 2.0]\n')
    out = cli_overrides(p, defaults={"backbone": {"dtype": "fp32", "device": "cpu"}, "workers": 3},
                        model=None, size=112, dtype=None, batch=None, whiten_dim=0, multiscale=None)
    assert out == {"backbone": {"name": "dinov2_vitb14", "weights": str((p.parent / "w" / "b.pth").resolve()),
                                "dtype": "bf16", "device": "cpu"},
                   "image": {"size": 112}, "pooling": {"scales": [1.0, 2.0]}, "batch": 4, "workers": 3,
                   "whitening": {"dim": None}}
    assert cli_overrides(None, multiscale=True) == {"pooling": {"scales": MULTISCALE}}
    assert cli_overrides(None, multiscale=False, weights=Path("x.pth")) == {
        "pooling": {"scales": (1.0,)}, "backbone": {"weights": str(Path("x.pth").resolve())}}
    assert cli_overrides(None, model=None, size=None) == {}
    with pytest.raises(TypeError, match="unknown option 'sizes'"):
        cli_overrides(None, sizes=3)


@pytest.mark.parametrize("option,value,said", [("batch", 0, "--batch must be >= 1, got 0"),
                                               ("size", 7, "--size must be 14 to 4096 pixels"),
                                               ("max_pixels", 0, "--max-pixels must be positive, got 0"),
                                               ("pooling", "max", "unknown pooling 'max'")])
def test_a_refused_option_names_the_option_and_a_file_its_key(tmp_path, option, value, said):
    with pytest.raises(UsageError) as refused:
        cli_overrides(None, **{option: value})
    assert str(refused.value).startswith(said)
    p = tmp_path / "c.toml"
    p.write_text("batch = 0\n")
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(p))}: batch must be >= 1, got 0$"):
        cli_overrides(p, **{option: None})  # the file's value: the file's words


def test_the_old_key_batch_size_still_reads(tmp_path):
    """`batch` was `batch_size` before (docs/decisions.md, "Names"): an index's stored config and a
    config file written then still open, and the new key wins where both are given."""
    assert EngineConfig.from_dict({"batch_size": 8}).batch == 8
    assert EngineConfig.from_dict({"batch_size": 8, "batch": 2}).batch == 2
    p = tmp_path / "old.toml"
    p.write_text("batch_size = 4\n")
    assert load_config(p).batch == 4

from __future__ import annotations

import pytest

from retrieval.config import EngineConfig, ImageConfig, load_config


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('batch_size = 4\n[backbone]\nname = "test_tiny"\n[image]\nsize = 224\n')
    cfg = load_config(p, image={"max_pixels": 1000})
    assert cfg.batch_size == 4 and cfg.backbone.name == "test_tiny"
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

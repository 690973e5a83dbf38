"""Frozen configuration dataclasses: the single source of defaults.

`configs/*.toml` files only override these. `load_config` merges such a file over the
defaults and rejects unknown keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SIZE = 448
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "dinov2_vits14"
    weights: str | None = None  # local file; None = official checkpoint (cache or download)
    device: str | None = None  # None = cuda when available, else cpu
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (the last two by autocast)


@dataclass(frozen=True)
class ImageConfig:
    size: int = DEFAULT_SIZE  # longer side after resizing, a multiple of the patch size
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels than this, before decoding

    def __post_init__(self) -> None:
        if self.size < 14:
            raise ValueError(f"size must be at least 14 pixels, got {self.size}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")


@dataclass(frozen=True)
class EngineConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    batch_size: int = 16

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _merge(cls: type, base: Any, overrides: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    updates: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown config key {where}{key!r}; valid keys: {', '.join(sorted(names))}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where}{key!r} must be a table")
            updates[key] = _merge(type(current), current, value, f"{where}{key}.")
        else:
            updates[key] = value
    return dataclasses.replace(base, **updates)


def load_config(path: str | Path | None = None, **overrides: Any) -> EngineConfig:
    """Defaults, then the TOML file at `path` (if any), then keyword overrides (nested dicts)."""
    config = EngineConfig()
    if path is not None:
        with open(path, "rb") as f:
            config = _merge(EngineConfig, config, tomllib.load(f), "")
    if overrides:
        config = _merge(EngineConfig, config, overrides, "")
    return config

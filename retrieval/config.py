"""Frozen configuration dataclasses: the single source of defaults.

`configs/*.toml` files only override these. `load_config` merges such a file over the
defaults and rejects unknown keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SIZE = 448
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_LINES = 50  # matches drawn as lines in a correspondence picture (the other inliers are dots)
MAX_SIZE = 4096  # longer side of a model input: 292 x 292 patches already; larger sizes only exhaust memory


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "dinov2_vits14"
    weights: str | None = None  # local file; None = official checkpoint (cache or download)
    device: str | None = None  # None = cuda when available, else cpu
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 (by autocast); an index stores what auto resolved to


@dataclass(frozen=True)
class ImageConfig:
    size: int = DEFAULT_SIZE  # longer side after resizing, a multiple of the patch size
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels than this, before decoding

    def __post_init__(self) -> None:
        if not 14 <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be 14 to {MAX_SIZE} pixels (the longer side the model sees), got {self.size}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")


@dataclass(frozen=True)
class PoolingConfig:
    pooling: str = "cls+gem"  # cls+gem | cls | gem
    gem_p: float = 3.0
    scales: tuple[float, ...] = (1.0,)  # e.g. (1.0, 0.7071, 1.4142) for multi-scale

    def __post_init__(self) -> None:
        if self.pooling not in ("cls+gem", "cls", "gem"):
            raise ValueError(f"unknown pooling {self.pooling!r}; valid: cls+gem, cls, gem")
        if self.gem_p <= 0:
            raise ValueError(f"gem_p must be positive, got {self.gem_p}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))


@dataclass(frozen=True)
class WhiteningConfig:
    enabled: bool = True
    min_images: int = 1000  # fit only with at least max(min_images, 2 x descriptor dim) images
    dim: int | None = None  # reduce to this many dimensions (None: keep all)


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "auto"  # auto | flat | ivf | hnsw
    gpu: bool | None = None  # exact search on the GPU (through torch); None: when CUDA is present
    dba: int = 0  # database-side augmentation: mix each vector with its top-k neighbours (0: off)
    dba_alpha: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"unknown index kind {self.kind!r}; valid: auto, flat, ivf, hnsw")


@dataclass(frozen=True)
class EngineConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    whitening: WhiteningConfig = field(default_factory=WhiteningConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    batch_size: int = 16
    workers: int | None = None  # decoder processes; None: cores - 1
    decode: str = "auto"  # where plain JPEGs are decoded: auto (the GPU when the model runs on one) | cpu | gpu

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: decode in threads between forward passes), got {self.workers}")
        if self.decode not in ("auto", "cpu", "gpu"):
            raise ValueError(f"unknown decode {self.decode!r}; valid: auto, cpu, gpu")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Inverse of to_dict (unknown keys are errors, missing keys take defaults)."""
        return _merge(EngineConfig, EngineConfig(), data, "")


def default_index_dir() -> Path:
    """Where `retrieve index` / `retrieve query` keep the index when --index is not given:
    $RETRIEVAL_INDEX if set, else $XDG_DATA_HOME/retrieval/index (~/.local/share/retrieval/index)."""
    explicit = os.environ.get("RETRIEVAL_INDEX")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "retrieval" / "index"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts: values of `over` replace those of `base`, tables merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
            updates[key] = tuple(value) if isinstance(value, list) else value
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

"""Frozen configuration dataclasses: the single source of defaults.

TOML files only override these: the presets installed with the package (`retrieval/presets/*.toml`,
named by `--config fast-cpu`) or a user's own. `load_config` merges such a file over the
defaults and rejects unknown keys, so a typo never silently falls back to a default.
Command-line options go over both (`cli_overrides`): defaults, then the file, then flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UsageError

DEFAULT_SIZE = 448
DEFAULT_MAX_PIXELS = 100_000_000
MULTISCALE: tuple[float, ...] = (1.0, 2 ** -0.5, 2 ** 0.5)  # the scales of `--multiscale`
# The choices of each setting: defined here once; the modules that act on them import them.
POOLINGS = ("cls+gem", "cls", "gem")
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
DECODERS = ("auto", "cpu", "gpu")  # where plain JPEGs are decoded
DTYPES = ("auto", "fp32", "bf16", "fp16")
DEFAULT_MAX_LINES = 50  # matches drawn as lines in a correspondence picture (the other inliers are dots)
MAX_SIZE = 4096  # longer side of a model input: 292 x 292 patches already; larger sizes only exhaust memory


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "dinov2_vits14"
    weights: str | None = None  # local file; None = official checkpoint (cache or download)
    device: str | None = None  # None = cuda when available, else cpu
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 (by autocast); an index stores what auto resolved to

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")


@dataclass(frozen=True)
class ImageConfig:
    size: int = DEFAULT_SIZE  # longer side after resizing, a multiple of the patch size
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels than this, before decoding

    def __post_init__(self) -> None:
        if not 14 <= self.size <= MAX_SIZE:
            raise UsageError(f"size must be 14 to {MAX_SIZE} pixels (the longer side the model sees), got {self.size}")
        if self.max_pixels < 1:
            raise UsageError(f"max_pixels must be positive, got {self.max_pixels}")


@dataclass(frozen=True)
class PoolingConfig:
    pooling: str = "cls+gem"  # cls+gem | cls | gem
    gem_p: float = 3.0
    scales: tuple[float, ...] = (1.0,)  # multi-scale: MULTISCALE = (1, 1/sqrt2, sqrt2)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {self.pooling!r}; valid: {', '.join(POOLINGS)}")
        if self.gem_p <= 0:
            raise UsageError(f"gem_p must be positive, got {self.gem_p}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise UsageError(f"scales must be positive numbers, got {self.scales}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))


@dataclass(frozen=True)
class WhiteningConfig:
    enabled: bool = True
    min_images: int = 1000  # fit only with at least max(min_images, 2 x descriptor dim) images
    dim: int | None = None  # reduce to this many dimensions (None: keep all)

    def __post_init__(self) -> None:
        if self.dim is not None and self.dim < 1:
            raise UsageError(f"dim must be >= 1 (or 0 on the command line: keep every dimension), got {self.dim}")
        if self.min_images < 0:
            raise UsageError(f"min_images must be >= 0, got {self.min_images}")


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "auto"  # auto | flat | ivf | hnsw | ivfpq
    gpu: bool | None = None  # exact search on the GPU (through torch); None: when CUDA is present
    dba: int = 0  # database-side augmentation: mix each vector with its top-k neighbours (0: off)
    dba_alpha: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise UsageError(f"unknown index kind {self.kind!r}; valid: {', '.join(INDEX_KINDS)}")
        if self.dba < 0:
            raise UsageError(f"dba must be >= 0 (0: off), got {self.dba}")
        if self.dba_alpha <= 0:
            raise UsageError(f"dba_alpha must be positive, got {self.dba_alpha}")
        if self.kind == "ivfpq" and self.dba:
            raise UsageError("database-side augmentation (--dba) needs every vector's neighbours, which ivfpq "
                             "does not compute; use --dba 0 or another --index-kind")


@dataclass(frozen=True)
class SearchOptions:
    """How one query searches an index: the options of `retrieve query`, POST /api/search and
    `retrieve eval`, checked here once. k results; re-ranked by verified patch matches over the top
    rerank_k when rerank; alpha-query-expanded with the top qe results (0: off) weighted by
    similarity ** qe_alpha."""

    k: int = 10
    rerank: bool = False
    rerank_k: int = 100
    qe: int = 0
    qe_alpha: float = 3.0

    def __post_init__(self) -> None:
        if self.k < 1 or self.rerank_k < 1 or self.qe < 0:
            raise UsageError(f"k (-k) and rerank_k (--rerank-k) must be at least 1 and qe (--qe) at least 0, "
                             f"got {self.k}, {self.rerank_k}, {self.qe}")
        if not (math.isfinite(self.qe_alpha) and self.qe_alpha > 0):
            raise UsageError(f"qe_alpha (--qe-alpha) must be a finite number above 0, got {self.qe_alpha:g}")


# DedupeOptions' bounds, which `retrieve dedupe`'s options take as theirs (cli/dedupe.py)
DEDUPE_MIN_K = 1
DEDUPE_THRESHOLDS = (-1.0, 1.0)  # a global cosine: both ends included
DEDUPE_COVERAGES = (0.0, 1.0)  # a share of the patches: above the first (a copy shares some), up to the second


@dataclass(frozen=True)
class DedupeOptions:
    """k: neighbours asked per image; threshold: global cosine (of the indexed vectors) for a pair
    to be verified at all; coverage: share of the smaller image's stored patches that must be
    verified inliers for a near copy; similar: also report the looser level; batch: images per
    kNN search (the memory bound)."""

    k: int = 8
    threshold: float = 0.5
    coverage: float = 0.35
    similar: bool = False
    batch: int = 256
    exact_only: bool = False  # same bytes only: no kNN graph, no model

    def __post_init__(self) -> None:
        (low, high), (above, most) = DEDUPE_THRESHOLDS, DEDUPE_COVERAGES
        if self.k < DEDUPE_MIN_K or self.batch < 1:
            raise UsageError(f"-k and the batch must be at least {DEDUPE_MIN_K}, got {self.k} and {self.batch}")
        if not low <= self.threshold <= high or not above < self.coverage <= most:
            raise UsageError(f"--threshold must lie in [{low:g}, {high:g}] and --coverage in ({above:g}, {most:g}], "
                             f"got {self.threshold:g} and {self.coverage:g}")


@dataclass(frozen=True)
class EngineConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    whitening: WhiteningConfig = field(default_factory=WhiteningConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    batch: int = 16  # images per forward pass (--batch)
    workers: int | None = None  # decoder processes; 0: threads between forward passes; None: engine.default_workers
    decode: str = "auto"  # where plain JPEGs are decoded: auto (the GPU when the model runs on one) | cpu | gpu

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UsageError(f"batch must be >= 1, got {self.batch}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"workers must be >= 0 (0: decode in threads between forward passes), got {self.workers}")
        if self.decode not in DECODERS:
            raise UsageError(f"unknown decode {self.decode!r}; valid: {', '.join(DECODERS)}")

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


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a TOML / JSON value fits a config field's annotation (ints count as floats)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return "none" if hint is type(None) else getattr(hint, "__name__", str(hint))


# keys renamed since an index or a config file could have stored them: old -> new (docs/decisions.md, "Names")
_RENAMED_KEYS = {"batch_size": "batch"}


def _merge(cls: type, base: Any, overrides: dict[str, Any], where: str) -> Any:
    if cls is EngineConfig:  # an older index's stored config, or an older config file, still reads
        old = {k: v for k, v in overrides.items() if k in _RENAMED_KEYS}
        overrides = {**{_RENAMED_KEYS[k]: v for k, v in old.items()},
                     **{k: v for k, v in overrides.items() if k not in old}}  # the new key wins
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    updates: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            raise UsageError(f"unknown config key {where + key!r}; valid keys: {', '.join(sorted(names))}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UsageError(f"config key {where + key!r} must be a table")
            updates[key] = _merge(type(current), current, value, f"{where}{key}.")
        elif not _type_ok(value, hints[key]):
            raise UsageError(f"config key {where + key!r} must be {_type_name(hints[key])}, got {value!r}")
        elif isinstance(value, (list, tuple)):
            updates[key] = tuple(value)
        else:
            updates[key] = float(value) if hints[key] is float else value
    return dataclasses.replace(base, **updates)


def preset_folder() -> Path:
    """Where the presets are installed: package data beside this module."""
    return Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    """The presets' names (`fast-cpu` for presets/fast-cpu.toml), sorted."""
    return sorted(p.stem for p in preset_folder().glob("*.toml"))


def config_path(config: str | Path) -> Path:
    """A `--config` value as a file: a file at that path, else the preset of that name (`fast-cpu`,
    or `fast-cpu.toml`); ConfigError listing the presets when it is neither."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    preset = preset_folder() / f"{name}.toml"
    if str(config).removesuffix(".toml") == name and preset.is_file():
        return preset
    hint = f" (the preset: --config {name})" if preset.is_file() else ""
    raise ConfigError(f"--config {config}: no such file{hint}; pass a preset's name ({', '.join(preset_names())}: "
                      f"the files in {preset_folder()}) or the path of a TOML file")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The overrides in a TOML config file, or a preset named (config_path), checked against EngineConfig.

    Returns only what the file sets (nested dicts), so that it can go over an existing index's
    stored config as well as over the defaults. A relative `backbone.weights` is taken relative
    to the file. Every problem is a one-line ConfigError naming the file.
    """
    path = config_path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    weights = data.get("backbone", {}).get("weights") if isinstance(data.get("backbone"), dict) else None
    if isinstance(weights, str) and not is_url(weights):
        data["backbone"]["weights"] = str((path.parent / Path(weights).expanduser()).resolve())
    try:
        _merge(EngineConfig, EngineConfig(), data, "")
    except ValueError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return data


def eval_defaults() -> dict[str, Any]:
    """What `retrieve eval` changes from EngineConfig's defaults, under a config file and flags:
    fp32, since its users compare scores with published numbers and across machines."""
    return {"backbone": {"dtype": "fp32"}}


# `retrieve` options -> config keys; None for top-level keys of EngineConfig.
_OPTIONS: dict[str, tuple[str | None, str]] = {
    "model": ("backbone", "name"),
    "weights": ("backbone", "weights"),
    "device": ("backbone", "device"),
    "dtype": ("backbone", "dtype"),
    "size": ("image", "size"),
    "max_pixels": ("image", "max_pixels"),
    "pooling": ("pooling", "pooling"),
    "multiscale": ("pooling", "scales"),
    "whitening": ("whitening", "enabled"),
    "whiten_dim": ("whitening", "dim"),
    "index_kind": ("index", "kind"),
    "dba": ("index", "dba"),
    "batch": (None, "batch"),
    "workers": (None, "workers"),
    "decode": (None, "decode"),
}


def is_url(weights: str) -> bool:
    """An http(s) URL for --weights (DINOv3's e-mailed ones), kept as given: the backbone downloads it.
    Also as a CLI `Path` leaves it, with one slash after the scheme."""
    return weights.startswith(("https:/", "http:/"))


def cli_overrides(config_file: str | Path | None = None, *, defaults: dict[str, Any] | None = None,
                  **options: Any) -> dict[str, Any]:
    """Nested overrides for a command: `defaults`, then the config file, then the options given.

    An option that is None was not given and leaves the file's (or the stored, or the default)
    value alone. `multiscale` True / False means MULTISCALE / one scale; `whiten_dim` 0 means
    keep every dimension; `weights` is made absolute. A value the config refuses is a UsageError
    that names the option (`--index-kind`), not the key it sets (`index.kind`), which a file's error names.
    """
    out = deep_merge(defaults or {}, read_config_file(config_file) if config_file is not None else {})
    flags: dict[str, Any] = {}
    for name, value in options.items():
        if name not in _OPTIONS:
            raise TypeError(f"cli_overrides: unknown option {name!r}; known: {', '.join(_OPTIONS)}")
        if value is None:
            continue
        if name == "weights":
            value = str(value) if is_url(str(value)) else str(Path(value).expanduser().resolve())
        elif name == "multiscale":
            value = MULTISCALE if value else (1.0,)
        elif name == "whiten_dim":
            value = value or None  # 0 clears a reduction, so it is set even as None
        section, key = _OPTIONS[name]
        flag = {section: {key: value}} if section else {key: value}
        try:
            _merge(EngineConfig, EngineConfig(), flag, "")
        except UsageError as e:
            text, option = str(e), f"--{name.replace('_', '-')}"
            raise UsageError(option + text[len(key):] if text.startswith(f"{key} ") else text) from None
        flags = deep_merge(flags, flag)
    return deep_merge(out, flags)


def load_config(path: str | Path | None = None, **overrides: Any) -> EngineConfig:
    """Defaults, then the TOML file at `path` (if any), then keyword overrides (nested dicts)."""
    config = EngineConfig()
    if path is not None:
        config = _merge(EngineConfig, config, read_config_file(path), "")
    if overrides:
        config = _merge(EngineConfig, config, overrides, "")
    return config

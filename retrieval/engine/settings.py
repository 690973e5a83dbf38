"""An index folder's configuration: what a new index takes, what an existing one may change, and
the fingerprint of what its stored descriptors depend on. No model is loaded here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import uuid
from pathlib import Path
from typing import Any

from ..config import EngineConfig, deep_merge
from ..errors import ArtifactMismatchError, RetrievalError
from ..store import Store


def fingerprint_fields(config: EngineConfig) -> dict[str, Any]:
    """What the stored descriptors depend on (besides the weights, hashed separately)."""
    return {"backbone": config.backbone.name, "dtype": config.backbone.dtype, "size": config.image.size,
            "pooling": dataclasses.asdict(config.pooling)}


def differences(stored: EngineConfig, asked: EngineConfig) -> str:
    """The fingerprint fields that differ, one phrase each: "size 448 in the index, 500 asked"."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(fingerprint_fields(stored)), flat(fingerprint_fields(asked))
    return "; ".join(f"{k} {_value(a.get(k))} in the index, {_value(b.get(k))} asked"
                     for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))


def _value(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ",".join(map(_value, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(config: EngineConfig, weights_id: str | None) -> str:
    return digest({**fingerprint_fields(config), "weights": weights_id})


def stored_config(store: Store, path: Path) -> EngineConfig:
    """The configuration an existing index was made with."""
    stored = store.get_meta("config")
    if stored is None:
        raise RetrievalError(f"index at {path} was never configured", fix="index a folder of photos into it",
                             command=f"retrieve index DIR --index {shlex.quote(str(path))}")
    return EngineConfig.from_dict(stored)


def preflight(overrides: dict[str, Any]) -> None:
    """Before a new index is created: its device must exist and its model and weights be at hand
    (the official checkpoint is downloaded now when it is not cached)."""
    from ..backbone import ensure_weights, resolve_device

    wanted = EngineConfig.from_dict(deep_merge(EngineConfig().to_dict(), overrides))
    resolve_device(wanted.backbone.device)
    ensure_weights(wanted.backbone.name, weights=wanted.backbone.weights)


def configure(store: Store, path: Path, overrides: dict[str, Any]) -> EngineConfig:
    """Merge `overrides` (nested dict of config fields) over the stored config (or the defaults
    for a new index) and store the result. An index holding images refuses overrides that
    would change its descriptors (model, dtype, size, pooling), naming the fix."""
    stored = store.get_meta("config")
    base = EngineConfig() if stored is None else EngineConfig.from_dict(stored)
    config = EngineConfig.from_dict(deep_merge(base.to_dict(), overrides))
    if config.backbone.dtype == "auto":  # an index keeps one concrete dtype, whichever machine opens it
        from ..backbone import native_dtype, resolve_device

        concrete = native_dtype(resolve_device(config.backbone.device))
        config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, dtype=concrete))
    if store.count() == 0 and any(store.get_meta(k) is not None for k in ("weights_id", "local_pca", "whitening")):
        # an empty index may change its model freely: forget everything learned from the old one
        store.set_meta(weights_id=None, local_pca=None, whitening=None)
    if store.get_meta("store_id") is None:  # tells this store's artefacts from a deleted one's
        store.set_meta(store_id=uuid.uuid4().hex)
    if stored is not None and store.count() > 0 and config.backbone.name != base.backbone.name:
        raise ArtifactMismatchError(
            f"index at {path} holds descriptors of {_model(base.backbone.name)}; {_model(config.backbone.name)} "
            f"makes other ones that cannot be searched together", fix="use another index folder for it",
            command="--index FOLDER")
    if stored is not None and store.count() > 0 and fingerprint_fields(config) != fingerprint_fields(base):
        raise ArtifactMismatchError(
            f"index at {path} holds descriptors made with other settings: {differences(base, config)}",
            fix="keep the index's settings, or use another index folder for these", command="--index FOLDER")
    known = store.get_meta("weights_id")
    new_weights = config.backbone.weights
    if known is not None and new_weights and new_weights != base.backbone.weights:
        _check_weights_file(new_weights, known, path)
    as_stored = json.loads(json.dumps(config.to_dict()))
    as_stored["backbone"]["device"] = None  # a device is this run's choice, not the index's
    if as_stored != stored:
        store.set_meta(config=as_stored)
    return config


def _model(name: str) -> str:
    """A backbone named with its family and patch size: "dinov3_vitb16 (DINOv3, patch 16)"."""
    from ..backbone import registry

    arch = registry().get(name)
    return name if arch is None else f"{name} ({arch.family.replace('dino', 'DINO')}, patch {arch.patch_size})"


def _check_weights_file(weights: str, known: str, path: Path) -> None:
    """A new --weights path for an existing index must hold the same bytes."""
    from ..backbone.weights import file_sha256

    try:
        got = "sha256:" + file_sha256(weights)
    except OSError as e:
        raise RetrievalError(f"weights file {weights} cannot be read ({e.strerror or e})") from e
    if got != known:
        raise ArtifactMismatchError(f"weights {weights} differ from those the index at {path} was built with",
                                    fix="give the original weights file", command="--weights FILE")

"""Which weights an index was built with, and whether this run's are the same.

An index records the id of its weights (backbone.weights_id: a hash of the file, or the official
checkpoint's name) when it first embeds, and refuses other weights from then on. Hashing a
ViT-g file takes seconds, so the hashes learned are remembered in the store by (path, size,
mtime). The model itself is loaded here too, so that no backbone is ever used unchecked; the
Ray driver checks without loading it (its workers load their own, engine/distributed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import EngineConfig
from ..errors import ArtifactMismatchError
from ..store import Store
from . import settings

if TYPE_CHECKING:
    from ..backbone import Backbone

REMEMBERED = 8  # weights-file hashes kept in the store


@dataclass(frozen=True)
class Weights:
    """This run's weights for an index, checked against its weights id: the file they are read
    from (None: the official checkpoint in the weights cache), that id, and the hashes remembered
    by (path, size, mtime) (backbone.weights.file_id)."""

    file: str | None
    id: str
    hashes: dict[str, str]


class IndexModel:
    """This run's model for the index in `folder`: its backbone loaded on first use from this run's
    `weights` file (None: the one the index names) on `device` (None: the index's setting), its
    weights checked against the index's first. Only `config.backbone` and the embedding settings
    are read, which an open index never changes."""

    def __init__(self, store: Store, config: EngineConfig, folder: Path, *, weights: str | None = None,
                 device: str | None = None) -> None:
        self.store, self.config, self.folder = store, config, folder
        self.weights, self.device = weights, device
        self._backbone: Backbone | None = None

    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_checked(self.store, self.config, self.folder, weights=self.weights,
                                          device=self.device)
        return self._backbone

    def checked(self) -> Weights:
        """This run's weights checked without loading the model (`checked`)."""
        return checked(self.store, self.config, self.folder, weights=self.weights)


def weights_file(config: EngineConfig, weights: str | None) -> str | None:
    """Where this run finds the index's weights: `weights` (this run's choice), else the stored
    path, else None (the official checkpoint in the weights cache)."""
    return weights or config.backbone.weights


def remembered(store: Store) -> dict[str, str]:
    """Weights-file hashes remembered by (path, size, mtime)."""
    return dict(store.get_meta("weights_hashes") or {})


def load_checked(store: Store, config: EngineConfig, folder: Path, *, weights: str | None,
                 device: str | None) -> Backbone:
    """The index's backbone from this run's `weights` (see weights_file) on `device` (else the
    index's setting); its weights must hash to what the index was built with."""
    from ..backbone import load_backbone

    cfg = config.backbone
    hashes = remembered(store)
    bb = load_backbone(cfg.name, weights=weights_file(config, weights), device=device or cfg.device, dtype=cfg.dtype,
                       hash_cache=hashes)
    _adopt(store, config, folder, bb.weights_id, weights, hashes)
    return bb


def checked(store: Store, config: EngineConfig, folder: Path, *, weights: str | None) -> Weights:
    """This run's weights (hashed, or their hash remembered), checked as `load_checked` checks
    them, without building the model: what a driver does before its workers load the model. The
    hashes it hands on include the one it computed, so workers never hash the file again, even
    where the store is read-only and cannot remember it."""
    from ..backbone import weights_id

    hashes = remembered(store)
    file = weights_file(config, weights)
    wid = weights_id(config.backbone.name, weights=file, hash_cache=hashes)
    _adopt(store, config, folder, wid, weights, hashes)
    return Weights(file, wid, hashes)  # what was learned here too: a read-only store does not remember it


def _adopt(store: Store, config: EngineConfig, folder: Path, weights_id: str, weights: str | None,
           hashes: dict[str, str]) -> None:
    """Record the hashes learned (not in a read-only store: they only save time) and, for a new
    index, its weights id; refuse other weights."""
    if hashes != remembered(store) and not store.readonly:
        store.set_meta(weights_hashes=dict(list(hashes.items())[-REMEMBERED:]))
    cfg = config.backbone
    known = store.get_meta("weights_id")
    if known is None:
        store.set_meta(weights_id=weights_id, fingerprint=settings.fingerprint(config, weights_id))
    elif known != weights_id:
        raise ArtifactMismatchError(
            f"weights {weights or cfg.weights or 'official ' + cfg.name} ({weights_id[:20]}...) differ "
            f"from those the index at {folder} was built with ({known[:20]}...)",
            fix="give the original weights file", command="--weights FILE")


__all__ = ["IndexModel", "Weights", "checked", "load_checked", "remembered", "weights_file"]

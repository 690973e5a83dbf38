"""retrieval: image instance retrieval on DINOv2 features, FAISS and SQLite.

The public API is imported lazily, so `import retrieval.images` (as decoder worker
processes do) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_backbone": "retrieval.backbone",
    "Backbone": "retrieval.backbone",
    "backbone_names": "retrieval.backbone",
    "load_image": "retrieval.images",
    "TokenBatch": "retrieval.types",
    "RetrievalError": "retrieval.errors",
    "BadImageError": "retrieval.errors",
    "UnknownBackboneError": "retrieval.errors",
    "WeightsError": "retrieval.errors",
    "ArtifactMismatchError": "retrieval.errors",
    "SchemaVersionError": "retrieval.errors",
    "ConfigError": "retrieval.errors",
    "UsageError": "retrieval.errors",
    "StoreError": "retrieval.errors",
    "Index": "retrieval.engine",
    "IndexInfo": "retrieval.engine",
    "UpdateSummary": "retrieval.engine",
    "SearchResult": "retrieval.engine",
    "Hit": "retrieval.engine",
    "EngineConfig": "retrieval.config",
    "load_config": "retrieval.config",
    "SearchOptions": "retrieval.config",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .backbone import Backbone, backbone_names, load_backbone
    from .config import EngineConfig, SearchOptions, load_config
    from .engine import Hit, Index, IndexInfo, SearchResult, UpdateSummary
    from .errors import (ArtifactMismatchError, BadImageError, ConfigError, RetrievalError, SchemaVersionError,
                         StoreError, UnknownBackboneError, UsageError, WeightsError)
    from .images import load_image
    from .types import TokenBatch


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy names too: dir() and tab completion show them
    return sorted({*globals(), *__all__})

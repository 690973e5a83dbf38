"""The only layer that knows the whole pipeline: one module per stage (see docs/decisions.md,
"Engine layout"), with `Index` (engine/index.py) the facade over them.

Names are imported on first use, so commands that need no model (`retrieve info`, `remove`)
never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Index": "index", "UpdateSummary": "update", "Roots": "files",
    "IndexInfo": "info", "SkippedFile": "info", "VectorIndexInfo": "info", "WhiteningInfo": "info",
    "Hit": "search", "SearchResult": "search", "Query": "search",
    "Embedding": "embedding",
    "Decoded": "forward", "Skipped": "forward", "default_workers": "forward",
    "FileTokens": "features", "embed": "features", "embed_all": "features", "open_backbone": "features",
    "pca_picture": "features", "save_png": "features", "write_features": "features",
    "EvalResult": "evaluation", "evaluate": "evaluation", "save_ranks": "evaluation", "save_report": "evaluation",
    "EvalOptions": "evaluation",
    "Pair": "maps", "explain": "maps", "match_files": "maps", "match_paths": "maps",
    "atomic_write": "files", "expand_inputs": "files", "index_roots": "files", "output_file": "files",
    "Cluster": "distributed", "ray_cluster": "distributed",
    "DedupeReport": "dedupe", "folder_against_index": "dedupe",
    "index_duplicates": "dedupe",
    "CheckReport": "check", "Finding": "check", "backup_store": "check", "check_index": "check",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .embedding import Embedding
    from .distributed import Cluster, ray_cluster
    from .dedupe import DedupeReport, folder_against_index, index_duplicates
    from .check import CheckReport, Finding, backup_store, check_index
    from .forward import Decoded, Skipped, default_workers
    from .evaluation import EvalOptions, EvalResult, evaluate, save_ranks, save_report
    from .maps import Pair, explain, match_files, match_paths
    from .features import FileTokens, embed, embed_all, open_backbone, pca_picture, save_png, write_features
    from .files import Roots, atomic_write, expand_inputs, index_roots, output_file
    from .index import Index
    from .info import IndexInfo, SkippedFile, VectorIndexInfo, WhiteningInfo
    from .update import UpdateSummary
    from .search import Hit, Query, SearchResult


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy names too: dir() and tab completion show them
    return sorted({*globals(), *__all__})

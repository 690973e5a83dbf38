"""The only layer that knows the whole pipeline (see DESIGN in docs/decisions.md)."""

from .check import CheckReport, Finding, backup_store, check_index
from .embedding import Decoded, Skipped, default_workers
from .features import Embedded, embed, open_backbone, embed_all, pca_picture, save_png, write_features
from .evaluation import EvalResult, evaluate, save_ranks, save_report
from .explain import Pair, explain, match_files
from .files import atomic_write, expand_inputs
from .indexer import Hit, Index, SearchResult, UpdateSummary

__all__ = [
    "CheckReport", "Finding", "backup_store", "check_index",
    "Decoded", "Embedded", "Pair", "explain", "match_files", "EvalResult", "evaluate", "save_ranks", "save_report", "Hit", "Index", "SearchResult", "Skipped", "UpdateSummary", "atomic_write",
    "default_workers", "embed", "embed_all", "expand_inputs", "open_backbone", "pca_picture", "save_png", "write_features",
]

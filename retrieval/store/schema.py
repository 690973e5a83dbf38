"""The store's schema: its version and the stepwise migrations that reach it."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

SCHEMA_VERSION = 4


def _v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db.table("images").create(
        {"id": int, "path": str, "size": int, "mtime_ns": int, "sha256": str, "width": int, "height": int,
         "status": str, "error": str, "descriptor": bytes},
        pk="id", not_null={"path", "status"}, if_not_exists=True,
    )
    db.table("images").create_index(["path"], unique=True, if_not_exists=True)
    db.table("images").create_index(["status"], if_not_exists=True)


def _v2(db: sqlite_utils.Database) -> None:
    """Local (patch) descriptors for re-ranking; rows from v1 get NULL and are recomputed on demand."""
    images = db.table("images")
    for column, kind in (("local_feats", bytes), ("local_coords", bytes), ("grid_h", int), ("grid_w", int)):
        if column not in images.columns_dict:
            images.add_column(column, kind)


def _v3(db: sqlite_utils.Database) -> None:
    """A file's status-change time and inode, which size and mtime alone miss changes without (a
    copy over a file with its old mtime restored). Rows from v2 get NULL: not known, filled in by
    the next `retrieve index` of their folder without reading the files (docs/index.md)."""
    images = db.table("images")
    for column in ("ctime_ns", "inode"):
        if column not in images.columns_dict:
            images.add_column(column, int)


def _v4(db: sqlite_utils.Database) -> None:
    """When a row was last indexed (embedded, or refused), for `retrieve list`. Rows from v3 get
    NULL: not known (shown as such), set the next time their file is embedded again."""
    images = db.table("images")
    if "indexed_ns" not in images.columns_dict:
        images.add_column("indexed_ns", int)


# version reached -> step from the version before it; add a step per schema change
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _v1, 2: _v2, 3: _v3, 4: _v4}

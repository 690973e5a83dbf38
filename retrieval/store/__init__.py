"""SQLite store (sqlite-utils): the source of truth of an index.

    store      the Store: rows, meta, generation and data version, backup and integrity check
    rows       its row types (FileRow, Upsert, Touch, Move, BlobSizes) and their columns
    schema     the schema version and its stepwise migrations
    connection the one guarded connection: transactions, sqlite3 errors -> one-line StoreErrors
    paths      paths stored losslessly (TEXT, or the file system's bytes), PathFilter
"""

from .connection import store_error, writable
from .paths import PathFilter
from .schema import MIGRATIONS, SCHEMA_VERSION
from .rows import BlobSizes, FileRow, ImageFacts, Move, Touch, Upsert, descriptor_bytes
from .store import Store

__all__ = ["BlobSizes", "FileRow", "ImageFacts", "MIGRATIONS", "Move", "PathFilter", "SCHEMA_VERSION", "Store",
           "Touch", "Upsert", "descriptor_bytes", "store_error", "writable"]

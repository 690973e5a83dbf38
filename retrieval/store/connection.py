"""The store's one SQLite connection: explicit transactions, and sqlite3 errors turned into
one-line StoreErrors naming the file (disk full, damaged, not a database, locked, read-only)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

from ..errors import DiskFullError, StoreCorruptError, StoreError


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, *, begin: str = "BEGIN IMMEDIATE", end: str = "COMMIT") -> None:
        self.conn = conn
        self.begin, self.end = begin, end

    def __enter__(self) -> None:
        self.conn.execute(self.begin)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            self.conn.execute(self.end)  # a COMMIT can fail too (disk full): a StoreError, as any statement
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if not self.conn.in_transaction:  # SQLite ends some failed transactions itself (SQLITE_FULL)
            return
        try:
            self.conn.execute("ROLLBACK")
        except StoreError:  # the error in flight says more than a failed rollback
            pass


# --- the error boundary: sqlite3 errors -> one-line StoreErrors naming the file ----------------
# SQLite's primary result codes (https://sqlite.org/rescode.html); the low byte of sqlite_errorcode
_BUSY, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 8, 10, 11, 13, 14, 26
# the same errors when they carry only their message (raised by hand, or by an older sqlite3 module)
_BY_MESSAGE = {"database or disk is full": _FULL, "database disk image is malformed": _CORRUPT,
               "file is not a database": _NOTADB, "database is locked": _BUSY, "disk I/O error": _IOERR}


def store_error(e: sqlite3.Error, path: Path) -> StoreError | None:
    """The StoreError an sqlite3 error on the store file `path` means for a user, or None for the
    errors that are bugs or expected by the caller (constraint violations, SQL errors)."""
    primary = _primary(e)
    if primary == _FULL:
        return DiskFullError(path, str(e))
    if primary in (_CORRUPT, _NOTADB):
        return StoreCorruptError(path, str(e))
    if primary == _BUSY:
        return StoreError(path, f"{path} is locked by another process ({e}); wait for it to finish and try again")
    if primary == _READONLY:
        return StoreError(path, f"cannot write {path} ({e}); make the file and its folder writable")
    if primary == _CANTOPEN:
        return StoreError(path, f"cannot open {path} ({e}); check that its folder exists and is writable")
    if primary == _IOERR:
        return StoreError(path, f"cannot read or write {path} ({e}); check the disk it is on (full, removed, "
                                f"failing), then run the same command again")
    return None


def _primary(e: BaseException | None) -> int | None:
    """The primary result code of an sqlite3 error (None for anything else)."""
    code = getattr(e, "sqlite_errorcode", None)
    return (code & 0xFF) if isinstance(code, int) else _BY_MESSAGE.get(str(e))


class _Guard:
    """`with guard:` re-raises the sqlite3 errors `store_error` knows as StoreErrors for `path`."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.Error):
            err = store_error(exc, self.path)
            if err is not None:
                raise err from exc


class _Cursor(sqlite3.Cursor):
    """A cursor whose every call runs under its connection's guard: rows are read lazily, so a
    damaged page can surface in a fetch long after the execute."""

    connection: _Connection

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        with self.connection.guard:
            return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _Cursor:
        with self.connection.guard:
            return super().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        with self.connection.guard:
            return super().executescript(sql_script)

    def fetchone(self) -> Any:
        with self.connection.guard:
            return super().fetchone()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        with self.connection.guard:
            return super().fetchmany(self.arraysize if size is None else size)

    def fetchall(self) -> list[Any]:
        with self.connection.guard:
            return super().fetchall()

    def __next__(self) -> Any:
        with self.connection.guard:
            return super().__next__()


class _Connection(sqlite3.Connection):
    """sqlite3.Connection whose statements (its own, sqlite-utils', and COMMIT) are guarded."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        self.guard = _Guard(_file_named(database) if kwargs.get("uri") else Path(database))
        with self.guard:
            super().__init__(database, *args, **kwargs)

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _Cursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str, /) -> Any:
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        with self.guard:
            super().commit()

    def rollback(self) -> None:
        with self.guard:
            super().rollback()

    def close(self) -> None:
        with self.guard:
            super().close()


def _file_named(uri: str) -> Path:
    """The file a `file:` URI names (its bytes as the file system's: names need not be UTF-8)."""
    return Path(os.fsdecode(unquote_to_bytes(urlsplit(uri).path)))


def _connect(path: Path, *, timeout: float = 5.0, query: str = "") -> _Connection:
    """A guarded autocommit connection (transactions are explicit: `_Transaction`), opened with
    the URI parameters `query` (https://sqlite.org/uri.html) when given."""
    database = f"file:{quote_from_bytes(os.fsencode(path))}?{query}" if query else str(path)
    conn = sqlite3.connect(database, timeout=timeout, isolation_level=None, factory=_Connection, uri=bool(query))
    assert isinstance(conn, _Connection)
    return conn


def writable(path: Path) -> bool:
    """Whether this process may write the database file `path` and create its WAL files beside it
    (os.access: permissions, and a file system mounted read-only)."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _connect_readonly(path: Path, *, timeout: float = 5.0) -> _Connection:
    """A guarded connection that never writes `path`, for a store this process may not write (or
    whose folder it may not write: `writable`). See docs/index.md, "A read-only index".

    SQLite reads a WAL database read-only (mode=ro) through its -shm file, which it must find or
    create (https://sqlite.org/wal.html, "Read-Only Databases"). A store closed cleanly has none
    (the last writer deletes it) and nobody may create one in a read-only folder: such a store is
    opened immutable, SQLite's promise that nobody changes the file while it is open, true of
    read-only media. Immutable also ignores the -wal file, so a store whose -wal still holds
    committed changes (a copy of a live index, or one killed mid-write) is refused instead of read
    without them."""
    conn = _connect(path, timeout=timeout, query="mode=ro")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except StoreError as e:
        conn.close()
        # SQLITE_READONLY_CANTINIT or SQLITE_CANTOPEN: no -shm to be had; any other error stands
        if _primary(e.__cause__) not in (_READONLY, _CANTOPEN):
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise StoreError(path, f"cannot read {path} where it is: committed changes are still in {wal.name}, which "
                               f"SQLite reads only through a {path.name}-shm file that it may not create in "
                               f"{path.parent}; copy the index folder (all its files) to writable media and use the copy")
    return _connect(path, timeout=timeout, query="mode=ro&immutable=1")

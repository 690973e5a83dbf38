"""The store's one SQLite connection: explicit transactions, and sqlite3 errors turned into
one-line StoreErrors naming the file (disk full, damaged, not a database, locked, read-only)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

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
    code = getattr(e, "sqlite_errorcode", None)
    primary = (code & 0xFF) if isinstance(code, int) else _BY_MESSAGE.get(str(e))
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
        self.guard = _Guard(Path(database))
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


def _connect(path: Path, *, timeout: float = 5.0) -> _Connection:
    """A guarded autocommit connection (transactions are explicit: `_Transaction`)."""
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, factory=_Connection)
    assert isinstance(conn, _Connection)
    return conn

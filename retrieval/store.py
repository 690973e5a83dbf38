"""SQLite store (sqlite-utils): the source of truth of an index.

One row per file: path, size, mtime_ns, sha256, width, height, status ('ok' | 'skipped'),
error, and the raw (pre-whitening) global descriptor as a float32 blob. Paths are stored
losslessly: as TEXT when they are valid UTF-8, else as the file system's bytes in a BLOB (Linux
names are bytes; old cameras and other systems write names that are not UTF-8). Either way the
API gives and takes `str`, with undecodable bytes as surrogate escapes (os.fsdecode). A `meta` table holds
the schema version, the index configuration and fingerprint, the whitening, and a generation
number that every committed change increments (and a data version that only row changes do). WAL journal: a crash loses at most the batch
in flight, never a committed one.

Every statement goes through one guarded connection (`_Connection`, `_Cursor`): SQLite's "disk
full", "damaged" and similar failures leave this module as one-line `StoreError`s naming the file
(see `store_error`), whichever call met them, the COMMIT of a transaction included.
"""

from __future__ import annotations

import bisect
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from .errors import DiskFullError, SchemaVersionError, StoreCorruptError, StoreError
from .types import shown

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    nbytes: int  # the file's size in bytes (column `size`)
    mtime_ns: int
    sha256: str | None
    status: str
    error: str | None


@dataclass(frozen=True)
class Upsert:
    """A file's new state. descriptor is None for skipped files."""

    path: str
    nbytes: int  # the file's size in bytes (column `size`)
    mtime_ns: int
    sha256: str | None
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    descriptor: np.ndarray | None = None
    local_feats: bytes | None = None
    local_coords: bytes | None = None
    grid: tuple[int, int] | None = None


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


# version reached -> step from the version before it; add a step per schema change
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _v1, 2: _v2}


class Store:
    def __init__(self, path: str | Path, *, create: bool = False, migrate: bool = True) -> None:
        """migrate=False opens an older schema as it is (for `retrieve check`, which only reads)."""
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self.db = sqlite_utils.Database(conn)
            if migrate:
                self._migrate()
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema -------------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} uses schema version {version}, newer than this program's {SCHEMA_VERSION}; "
                f"upgrade retrieval"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                MIGRATIONS[target](self.db)
                self.db.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def transaction(self) -> Any:
        """`with store.transaction():` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return _Transaction(self.db.conn)

    def snapshot(self) -> Any:
        """`with store.snapshot():` the reads inside see one committed state, even while another
        process writes (a WAL read transaction; nothing is written)."""
        return _Transaction(self.db.conn, begin="BEGIN DEFERRED", end="ROLLBACK")

    # --- integrity and backup ---------------------------------------------------------------
    def integrity_check(self) -> list[str]:
        """SQLite's full `PRAGMA integrity_check` (every page, index and constraint): the problems it
        reports, [] when there are none. StoreCorruptError when the file is too damaged to check."""
        found = [str(r[0]) for r in self.db.execute("PRAGMA integrity_check").fetchall()]
        if found == ["ok"]:
            return []
        return [line for f in found for line in f.splitlines()  # one problem a line, without the
                if line.strip() and not line.startswith("*** in database")]  # "*** in database main ***" head

    def layout(self) -> dict[str, set[str]]:
        """Table name -> its column names, as the file holds them."""
        return {t: set(self.db.table(t).columns_dict) for t in self.db.table_names()}

    def blob_sizes(self) -> Iterator[BlobSizes]:
        """Every row's status and the sizes of its blobs (not the blobs themselves), by id."""
        sql = ("SELECT id, status, length(descriptor), length(local_feats), length(local_coords), grid_h, grid_w "
               "FROM images ORDER BY id")
        for r in self.db.execute(sql):
            yield BlobSizes(*r)

    def backup(self, dest: str | Path) -> None:
        """Copy this store into the file `dest` with SQLite's online backup: one consistent
        snapshot of the committed state, taken without blocking a process that is writing."""
        target = _connect(Path(dest))
        try:
            with target.guard:  # the backup API reports errors (disk full...) on the destination
                self.db.conn.backup(target)
        finally:
            target.close()

    # --- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return default if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        [key, json.dumps(value)])

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            for k, v in values.items():
                self._set_meta(k, v)
            self._bump()

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    def _bump(self) -> None:
        self._set_meta("generation", self.generation + 1)

    @property
    def data_version(self) -> int:
        """Changes only when rows are added, replaced or deleted (not on meta or timestamp updates):
        what derived artefacts (whitening, vectors) must be rebuilt for."""
        return int(self.get_meta("data_version", 0))

    # --- rows ---------------------------------------------------------------------------------
    def rows(self, *, under: Sequence[str] | None = None) -> Iterator[FileRow]:
        """Every file row, or those whose path is under one of `under` (absolute folders or files)."""
        sql = "SELECT id, path, size, mtime_ns, sha256, status, error FROM images"
        inside = None if under is None else PathFilter(under)
        for r in self.db.execute(sql + " ORDER BY path").fetchall():
            row = FileRow(r[0], _path_out(r[1]), *r[2:])
            if inside is None or row.path in inside:
                yield row

    def apply(self, upserts: Iterable[Upsert] = (), deletes: Iterable[int] = (),
              touches: Iterable[tuple[int, int, int]] = ()) -> None:
        """One transaction: insert/replace files by path, delete ids, update (id, nbytes, mtime_ns)."""
        upserts, deletes = list(upserts), list(deletes)
        with self.transaction():
            if upserts or deletes:
                self._set_meta("data_version", self.data_version + 1)
            for u in upserts:
                blob = None if u.descriptor is None else np.ascontiguousarray(u.descriptor, np.float32).tobytes()
                gh, gw = u.grid if u.grid is not None else (None, None)
                self.db.execute(
                    "INSERT INTO images(path, size, mtime_ns, sha256, width, height, status, error, descriptor, "
                    "local_feats, local_coords, grid_h, grid_w) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, "
                    "mtime_ns=excluded.mtime_ns, sha256=excluded.sha256, width=excluded.width, "
                    "height=excluded.height, status=excluded.status, error=excluded.error, "
                    "descriptor=excluded.descriptor, local_feats=excluded.local_feats, "
                    "local_coords=excluded.local_coords, grid_h=excluded.grid_h, grid_w=excluded.grid_w",
                    [_path_in(u.path), u.nbytes, u.mtime_ns, u.sha256, u.width, u.height, u.status, None if u.error is None else shown(u.error), blob,
                     u.local_feats, u.local_coords, gh, gw],
                )
            for i in deletes:
                self.db.execute("DELETE FROM images WHERE id = ?", [int(i)])
            for i, size, mtime_ns in touches:
                self.db.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?", [size, mtime_ns, int(i)])
            self._bump()

    def descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, raw descriptors (n, d) float32) of every indexed file, by id."""
        rows = self.db.execute("SELECT id, descriptor FROM images WHERE status = 'ok' ORDER BY id").fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], np.int64)
        x = np.stack([np.frombuffer(r[1], np.float32) for r in rows])
        return ids, x

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id, path FROM images WHERE id IN ({marks})", ids).fetchall()
        return {i: _path_out(p) for i, p in rows}

    def local(self, ids: Iterable[int]) -> dict[int, tuple[bytes, bytes, tuple[int, int]] | None]:
        """id -> (feats blob, coords blob, grid) or None where the row has no local descriptors."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT id, local_feats, local_coords, grid_h, grid_w FROM images WHERE id IN ({marks})", ids).fetchall()
        return {r[0]: None if r[1] is None else (r[1], r[2], (r[3], r[4])) for r in rows}

    def count(self, status: str | None = None) -> int:
        if status is None:
            return int(self.db.execute("SELECT count(*) FROM images").fetchone()[0])
        return int(self.db.execute("SELECT count(*) FROM images WHERE status = ?", [status]).fetchone()[0])

    def skipped(self) -> list[tuple[str, str]]:
        return [(_path_out(p), e) for p, e in self.db.execute(
            "SELECT path, error FROM images WHERE status = 'skipped' ORDER BY path").fetchall()]


def _path_in(path: str) -> str | bytes:
    """A path as stored: TEXT when it is valid UTF-8, else its file-system bytes (a BLOB)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _path_out(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


@dataclass(frozen=True)
class BlobSizes:
    """Sizes in bytes of one row's blobs (None where NULL), for `retrieve check`."""

    id: int
    status: str
    descriptor: int | None
    local_feats: int | None
    local_coords: int | None
    grid_h: int | None
    grid_w: int | None


class PathFilter:
    """`path in PathFilter(roots)`: is path one of the roots or inside one? O(log n) per test.

    Roots nested in other roots are dropped; the rest are sorted by path components, so the only
    candidate ancestor of a path is the greatest root not after it.
    """

    def __init__(self, roots: Sequence[str]) -> None:
        parts = sorted({_parts(r) for r in roots})
        kept: list[tuple[str, ...]] = []
        for p in parts:
            if not kept or p[: len(kept[-1])] != kept[-1]:
                kept.append(p)
        self._roots = kept

    def __contains__(self, path: object) -> bool:
        p = _parts(str(path))
        i = bisect.bisect_right(self._roots, p) - 1
        return i >= 0 and p[: len(self._roots[i])] == self._roots[i]


def _parts(path: str) -> tuple[str, ...]:
    return tuple(x for x in path.split("/") if x)


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

"""SQLite store (sqlite-utils): the source of truth of an index.

One row per file: path, size, mtime_ns, ctime_ns, inode, sha256, width, height, status ('ok' |
'skipped'), error, indexed_ns (when it was last embedded or refused), and the raw (pre-whitening)
global descriptor as a float32 blob. Times and
inodes are stored as int64 whatever the file system says (types.int64_time, int64_id): a file
dated past 2262 never fails the batch it is in. Paths are stored
losslessly: as TEXT when they are valid UTF-8, else as the file system's bytes in a BLOB (Linux
names are bytes; old cameras and other systems write names that are not UTF-8). Either way the
API gives and takes `str`, with undecodable bytes as surrogate escapes (os.fsdecode). A `meta` table holds
the schema version, the index configuration and fingerprint, the whitening, and a generation
number that every committed change increments (and a data version that only row changes do). WAL journal: a crash loses at most the batch
in flight, never a committed one. A store this process cannot write (a read-only mount, a snapshot,
another user's files) is opened read-only (`Store.readonly`; connection._connect_readonly).

Every statement goes through one guarded connection (`_Connection`, `_Cursor`): SQLite's "disk
full", "damaged" and similar failures leave this module as one-line `StoreError`s naming the file
(see `store_error`), whichever call met them, the COMMIT of a transaction included.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from ..errors import SchemaVersionError, StoreCorruptError, StoreError
from ..types import shown
from .connection import _connect, _connect_readonly, _Transaction, writable
from .paths import PathFilter, _path_in, _path_out, _ranges
from .rows import (_ROW, DESCRIPTOR_DTYPE, BlobSizes, FileRow, ImageFacts, Move, Touch, Upsert, _file_row, _stat,
                   descriptor_bytes)
from .schema import MIGRATIONS, SCHEMA_VERSION

IDS_AT_ONCE = 10_000  # ids in one `WHERE id IN (...)` (SQLite's limit on a statement's variables is 32,766)
ROWS_AT_ONCE = 1000  # rows a listing takes from its cursor at a time


class Store:
    def __init__(self, path: str | Path, *, create: bool = False, migrate: bool = True) -> None:
        """migrate=False opens an older schema as it is (for `retrieve check`, which only reads).
        An existing store that this process cannot write is opened read-only (`readonly`)."""
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(self.path)
        self.readonly = self.path.is_file() and not writable(self.path)
        if self.readonly:
            conn = _connect_readonly(self.path, timeout=30.0)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path, timeout=30.0)
        try:
            if not self.readonly:
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
        if version < SCHEMA_VERSION and self.readonly:
            raise StoreError(self.path, f"{self.path} uses schema version {version} and must be migrated to "
                                        f"{SCHEMA_VERSION}, which needs write access",
                             fix="open it once where it is writable, or use a copy",
                             command=f"retrieve info --index {self.path.parent}")
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
        """Changes with every committed change, rows or meta (a touched timestamp, a new whitening):
        what in-memory caches are keyed on. Files derived from the rows key on `data_version`."""
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
        inside = None if under is None else PathFilter(under)
        for r in self.db.execute(f"SELECT {_ROW} FROM images ORDER BY path").fetchall():
            row = _file_row(r)
            if inside is None or row.path in inside:
                yield row

    def listing(self, *, under: Sequence[str] | None = None, status: str | None = None) -> Iterator[FileRow]:
        """`rows`, streamed: read from cursors as the caller iterates (a million rows are never all in
        memory, and the first comes at once), those under `under` (absolute folders or files; root by
        root, each by path) or all by path, with `status` ('ok', 'skipped') if given. Every statement
        walks the path index in order: SQLite never sorts (`+status` keeps it off the status index)."""
        also = "" if status is None else " AND +status = ?"
        for where, args in _ranges(under):
            sql = f"SELECT {_ROW} FROM images WHERE {where}{also} ORDER BY path"
            cursor = self.db.execute(sql, [*args] if status is None else [*args, status])
            while rows := cursor.fetchmany(ROWS_AT_ONCE):
                yield from map(_file_row, rows)

    def row(self, ref: int | str) -> FileRow | None:
        """The row with this id (an int) or this exact stored path (a str), or None."""
        where, arg = ("id = ?", int(ref)) if isinstance(ref, int) else ("path = ?", _path_in(ref))
        r = self.db.execute(f"SELECT {_ROW} FROM images WHERE {where}", [arg]).fetchone()
        return None if r is None else _file_row(r)

    def apply(self, upserts: Iterable[Upsert] = (), deletes: Iterable[int] = (),
              touches: Iterable[Touch | tuple[int, int, int]] = (), moves: Iterable[Move] = ()) -> None:
        """One transaction: insert/replace files by path, delete ids, update the stats of `touches`
        (Touch, or (id, nbytes, mtime_ns), which leaves the ctime and inode unknown), and give the
        rows of `moves` their new path and stat. Moves and touches leave the data version alone:
        the descriptors of every id are what they were, so whitening and vectors stay."""
        upserts, deletes = list(upserts), list(deletes)
        now = time.time_ns()  # the rows' indexed_ns (a touch keeps its row's)
        with self.transaction():
            if upserts or deletes:
                self._set_meta("data_version", self.data_version + 1)
            for u in upserts:
                blob = None if u.descriptor is None else np.ascontiguousarray(u.descriptor, DESCRIPTOR_DTYPE).tobytes()
                gh, gw = u.grid if u.grid is not None else (None, None)
                self.db.execute(
                    "INSERT INTO images(path, size, mtime_ns, ctime_ns, inode, sha256, width, height, status, error, "
                    "descriptor, local_feats, local_coords, grid_h, grid_w, indexed_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "size=excluded.size, mtime_ns=excluded.mtime_ns, ctime_ns=excluded.ctime_ns, "
                    "inode=excluded.inode, sha256=excluded.sha256, width=excluded.width, "
                    "height=excluded.height, status=excluded.status, error=excluded.error, "
                    "descriptor=excluded.descriptor, local_feats=excluded.local_feats, "
                    "local_coords=excluded.local_coords, grid_h=excluded.grid_h, grid_w=excluded.grid_w, "
                    "indexed_ns=excluded.indexed_ns",
                    [_path_in(u.path), u.nbytes, *_stat(u.mtime_ns, u.ctime_ns, u.inode), u.sha256, u.width,
                     u.height, u.status, None if u.error is None else shown(u.error), blob, u.local_feats,
                     u.local_coords, gh, gw, now],
                )
            for i in deletes:
                self.db.execute("DELETE FROM images WHERE id = ?", [int(i)])
            for t in (Touch(*x) for x in touches):
                self.db.execute("UPDATE images SET size = ?, mtime_ns = ?, ctime_ns = ?, inode = ? WHERE id = ?",
                                [t.nbytes, *_stat(t.mtime_ns, t.ctime_ns, t.inode), int(t.id)])
            self.db.conn.executemany(
                "UPDATE images SET path = ?, size = ?, mtime_ns = ?, ctime_ns = ?, inode = ? WHERE id = ?",
                [(_path_in(m.path), m.nbytes, *_stat(m.mtime_ns, m.ctime_ns, m.inode), int(m.id)) for m in moves])
            self._bump()

    def descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, raw descriptors (n, d) float32) of every indexed file, by id."""
        return self._stacked(self.db.execute("SELECT id, descriptor FROM images WHERE status = 'ok' ORDER BY id")
                             .fetchall())

    def descriptor_ids(self) -> np.ndarray:
        """(n,) int64: the ids of every indexed file, ascending (8 bytes a row; no descriptor is read)."""
        rows = self.db.execute("SELECT id FROM images WHERE status = 'ok' ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def descriptors_chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`descriptors()` as (ids, raw descriptors) chunks of at most `size` rows, by id, so a
        caller never holds them all. Reads in one snapshot transaction: a writer committing
        meanwhile is not seen half-way."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        with self.snapshot():  # one committed state across the chunks
            last, nbytes = -(1 << 62), None  # type: tuple[int, int | None]
            while True:
                rows = self.db.execute("SELECT id, descriptor FROM images WHERE status = 'ok' AND id > ? "
                                       "ORDER BY id LIMIT ?", [last, size]).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                chunk = self._stacked(rows, nbytes)
                nbytes = descriptor_bytes(chunk[1].shape[1])  # every chunk's rows as long as the first's
                yield chunk

    def descriptors_of(self, ids: Iterable[int]) -> np.ndarray:
        """(len(ids), d) float32: the raw descriptors of these indexed ids, in the order given."""
        ids = [int(i) for i in ids]
        got: dict[int, bytes] = dict(self._where_in("id, descriptor", "id", ids, also="status = 'ok'"))
        missing = [i for i in ids if i not in got]
        if missing:
            raise KeyError(f"no indexed descriptor for ids {missing[:5]}")
        return self._stacked([(i, got[i]) for i in ids])[1]

    def _stacked(self, rows: Sequence[tuple[int, bytes | None]], size: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, raw descriptors (n, d) float32) of (id, blob) rows: the one reader of
        the blobs `apply` writes (d float32 values each, `descriptor_bytes`). Rows whose blob is
        missing or not `size` bytes (default: most rows' size) are a StoreCorruptError naming them."""
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        if size is None:
            size = Counter(len(blob or b"") for _, blob in rows).most_common(1)[0][0]
        bad = [i for i, blob in rows if blob is None or len(blob) != size or not blob]
        if bad or size % DESCRIPTOR_DTYPE.itemsize:
            bad = bad or [rows[0][0]]
            raise StoreCorruptError(self.path, f"the descriptors of ids {', '.join(map(str, bad[:5]))} are not "
                                               f"{size}-byte float32 vectors as the others are")
        return (np.array([r[0] for r in rows], np.int64),
                np.stack([np.frombuffer(blob, DESCRIPTOR_DTYPE) for _, blob in rows]))  # type: ignore[arg-type]  # None refused above

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        return {i: _path_out(p) for i, p in self._where_in("id, path", "id", map(int, ids))}

    def local(self, ids: Iterable[int]) -> dict[int, tuple[bytes, bytes, tuple[int, int]] | None]:
        """id -> (feats blob, coords blob, grid) or None where the row has no local descriptors."""
        rows = self._where_in("id, local_feats, local_coords, grid_h, grid_w", "id", map(int, ids))
        return {r[0]: None if r[1] is None else (r[1], r[2], (r[3], r[4])) for r in rows}

    def _where_in(self, columns: str, key: str, values: Iterable[Any], *, also: str = "") -> list[Any]:
        """The rows whose `key` column is one of `values` (and that meet `also`, an SQL condition),
        asked IDS_AT_ONCE at a time: a statement holds at most 32,766 variables in SQLite, and eval
        or a query over mostly-gone files asks for more."""
        values, where = list(values), f"{also} AND " if also else ""
        rows: list[Any] = []
        for start in range(0, len(values), IDS_AT_ONCE):
            part = values[start: start + IDS_AT_ONCE]
            rows += self.db.execute(f"SELECT {columns} FROM images WHERE {where}{key} IN "
                                    f"({','.join('?' * len(part))})", part).fetchall()
        return rows

    def facts(self, ids: Iterable[int]) -> dict[int, ImageFacts]:
        """What choosing among copies needs of these rows (dedupe): path, pixels, mtime, hash."""
        rows = self._where_in("id, path, width, height, mtime_ns, sha256", "id", map(int, ids))
        return {r[0]: ImageFacts(r[0], _path_out(r[1]), *r[2:]) for r in rows}

    def ids_by_hash(self, hashes: Iterable[str] | None = None) -> dict[str, list[int]]:
        """sha256 -> ids (ascending) of indexed files with that content: for `hashes`, those found
        among them; for None, every hash that more than one indexed file has (exact copies)."""
        if hashes is None:
            rows = self.db.execute("SELECT sha256, id FROM images WHERE status = 'ok' AND sha256 IN (SELECT sha256 "
                                   "FROM images WHERE status = 'ok' GROUP BY sha256 HAVING count(*) > 1) "
                                   "ORDER BY sha256, id").fetchall()
        else:
            rows = sorted(self._where_in("sha256, id", "sha256", dict.fromkeys(hashes), also="status = 'ok'"),
                          key=lambda r: r[1])
        out: dict[str, list[int]] = {}
        for sha, i in rows:
            out.setdefault(sha, []).append(int(i))
        return out

    def size_of(self, image_id: int) -> tuple[int, int] | None:
        """Upright (width, height) of an indexed image (status ok) as it was indexed; None when
        no such image is indexed."""
        row = self.db.execute("SELECT width, height FROM images WHERE id = ? AND status = 'ok'",
                              [int(image_id)]).fetchone()
        return None if row is None else (int(row[0] or 0), int(row[1] or 0))

    def commits(self) -> int:
        """SQLite's PRAGMA data_version: a number that changes when another connection commits to
        the file (this connection's own commits leave it alone). Cheap; reads no table."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def count(self, status: str | None = None) -> int:
        if status is None:
            return int(self.db.execute("SELECT count(*) FROM images").fetchone()[0])
        return int(self.db.execute("SELECT count(*) FROM images WHERE status = ?", [status]).fetchone()[0])

    def skipped(self) -> list[tuple[str, str]]:
        return [(_path_out(p), e) for p, e in self.db.execute(
            "SELECT path, error FROM images WHERE status = 'skipped' ORDER BY path").fetchall()]

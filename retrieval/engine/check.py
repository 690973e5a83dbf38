"""Damage and recovery: `check` an index folder, `backup` the one part of it that cannot be rebuilt.

The store (store.sqlite) is the index's source of truth; the vectors file and the whitening are
derived from it and rebuilt whenever they do not match it. So `check` reads the store fully
(SQLite's own integrity check, then the index's invariants over every row) and the derived parts
only as far as to say whether they will be used or rebuilt. Problems are findings, never
exceptions: a damaged file is what the command is for. See docs/index.md, "Damage and recovery".
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import local
from .. import vectors as vindex
from .. import whitening as wh
from ..backbone import registry
from ..config import EngineConfig
from ..errors import ArtifactMismatchError, RetrievalError, StoreCorruptError
from ..local import LocalPCA
from ..store import SCHEMA_VERSION, Store, descriptor_bytes
from .commit import LOCAL_PCA, stored_pca
from .derived import WHITENING, descriptor_dim, fitted, vectors_fingerprint
from .files import EXACT_FILE, STORE_FILE, VECTORS_FILE, backup_target

OK, NOTE, ERROR = "ok", "note", "error"
NAMED = 5  # rows named per finding; the count says how many there are
SQLITE_LINES = 20  # lines of SQLite's integrity report shown


@dataclass(frozen=True)
class Finding:
    level: str  # ok: checked and fine | note: will be rebuilt or migrated by itself | error: damage
    message: str
    derived: bool = False  # about a file rebuilt from the store (vectors.npz, vectors.f32), not the store


@dataclass(frozen=True)
class CheckReport:
    index: Path
    findings: tuple[Finding, ...]
    images: int | None = None  # rows with status ok, when the rows could be read
    skipped: int | None = None
    unreadable: bool = False  # SQLite itself found damage: nothing to fix row by row

    @property
    def store(self) -> Path:
        return self.index / STORE_FILE

    @property
    def damaged(self) -> bool:
        return any(f.level == ERROR for f in self.findings)

    @property
    def summary(self) -> str:
        errors = sum(f.level == ERROR for f in self.findings)
        if errors and all(f.derived for f in self.findings if f.level == ERROR):
            return (f"{self.index}: a file derived from the store is damaged ({errors} problem{'s' * (errors > 1)} "
                    f"above; the store itself is healthy): follow the fix each line names")
        if errors:
            fix = "" if self.unreadable else "follow the fix each line names, or "
            return (f"{self.store} is damaged ({errors} problem{'s' * (errors > 1)} above): {fix}restore a copy made "
                    f"with `retrieve backup`, or index the folders again into a new --index")
        notes = sum(f.level == NOTE for f in self.findings)
        return (f"{self.index}: healthy, {self.images} images indexed, {self.skipped} skipped"
                + (f" ({notes} note{'s' * (notes > 1)})" if notes else ""))

    def to_json(self) -> dict[str, Any]:
        """`retrieve check --json`'s object (a JSON-ready value, as every to_json here returns)."""
        return {"index": str(self.index), "store": str(self.store), "healthy": not self.damaged,
                "images": self.images, "skipped": self.skipped,
                "findings": [{"level": f.level, "message": f.message} for f in self.findings]}


class _Findings(list[Finding]):
    def ok(self, message: str) -> None:
        self.append(Finding(OK, message))

    def note(self, message: str) -> None:
        self.append(Finding(NOTE, message))

    def error(self, message: str, *, derived: bool = False) -> None:
        self.append(Finding(ERROR, message, derived))


def check_index(path: str | Path) -> CheckReport:
    """Check the index folder `path`: SQLite's integrity_check of the store, its schema, every
    row's blobs against the configuration, the whitening and patch PCA, and whether the vectors
    file matches the store. Reads only; safe while `retrieve index` runs (one read snapshot)."""
    path = Path(path)
    file = path / STORE_FILE
    if not file.is_file():
        raise RetrievalError(f"no index at {path} (no {STORE_FILE}); pass the index folder with --index")
    found = _Findings()
    counts: dict[str, int] = {}
    try:
        with Store(file, migrate=False) as store:
            unreadable = not _check_store(path, store, found, counts)
    except StoreCorruptError as e:  # past what the checks themselves expect: the file is beyond reading
        found.error(f"{file}: SQLite cannot read it ({e.detail})")
        unreadable = True
    return CheckReport(path, tuple(found), counts.get("images"), counts.get("skipped"), unreadable)


def _check_store(path: Path, store: Store, found: _Findings, counts: dict[str, int]) -> bool:
    """False when SQLite's integrity check fails (the rest is then not checked)."""
    file = store.path
    problems = store.integrity_check()
    if problems:
        for line in problems[:SQLITE_LINES]:
            found.error(f"{file}: SQLite integrity_check: {line}")
        if len(problems) > SQLITE_LINES:
            found.error(f"{file}: SQLite integrity_check: ... and {len(problems) - SQLITE_LINES} more lines")
        return False  # the index's own invariants mean little over pages SQLite itself cannot trust
    found.ok(f"{file}: SQLite integrity_check found no problems")

    version = store.schema_version
    if version > SCHEMA_VERSION:
        found.error(f"{file} uses schema version {version}, newer than this program's {SCHEMA_VERSION}; upgrade "
                    f"retrieval to check it")
        return True
    if version < SCHEMA_VERSION:
        found.note(f"{file} uses schema version {version}; it is migrated to {SCHEMA_VERSION} the next time it is "
                   f"opened (`retrieve info` does it), and checked in full after that")
        return True
    layout = store.layout()
    need = {"meta": {"key", "value"}, "images": {"id", "path", "status", "descriptor", "local_feats", "local_coords",
                                                 "grid_h", "grid_w"}}
    missing = [f"{t}.{c}" for t, cols in need.items() for c in sorted(cols - layout.get(t, set()))]
    if missing:
        found.error(f"{file} claims schema version {version} but lacks {', '.join(missing)}: it is not (or no "
                    f"longer) an index store")
        return True
    found.ok(f"{file}: schema version {version}, tables as expected")

    with store.snapshot():  # rows, meta and the data version the vectors are compared with: one state
        config = _config(store, found)
        if config is None:
            return True
        desc_dim = descriptor_dim(config)
        pca_usable, pca = _local_pca(store, config, found)
        ids = _check_rows(store, config, desc_dim, pca, found, counts, pca_usable=pca_usable)
        usable, w = _whitening(store, desc_dim, found)
        if usable:  # else the vectors are not compared with it: they are rebuilt once it is refitted
            _check_vectors(path, store, config, ids, w.dim_out if w is not None else desc_dim, found)
    return True


def _meta(store: Store, key: str, found: _Findings) -> tuple[bool, Any]:
    """(readable, value) of a meta entry: a value that is not JSON is an error finding."""
    try:
        return True, store.get_meta(key)
    except ValueError as e:
        found.error(f"{store.path}: meta entry {key!r} is not valid JSON ({e}); the store was altered outside "
                    f"retrieval: restore a backup or index the folders again into a new --index")
        return False, None


def _config(store: Store, found: _Findings) -> EngineConfig | None:
    readable, raw = _meta(store, "config", found)
    if not readable:
        return None
    if raw is None:
        found.error(f"{store.path} holds no index configuration; run `retrieve index DIR --index {store.path.parent}`")
        return None
    try:
        config = EngineConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        found.error(f"{store.path}: the stored configuration is not valid ({e})")
        return None
    found.ok(f"configuration: {config.backbone.name} ({config.backbone.dtype}), size {config.image.size}, "
             f"pooling {config.pooling.pooling}")
    return config


def _local_pca(store: Store, config: EngineConfig, found: _Findings) -> tuple[bool, LocalPCA | None]:
    """(usable, the patch PCA or None when there is none yet), read by the engine's own reader
    (commit.stored_pca) for the tokens of the index's backbone, when this program knows it."""
    readable, _ = _meta(store, LOCAL_PCA, found)
    if not readable:
        return False, None
    arch = registry().get(config.backbone.name)
    try:
        pca = stored_pca(store, dim_in=None if arch is None else arch.dim)
    except ArtifactMismatchError as e:
        found.error(str(e))
        return False, None
    if pca is not None:
        found.ok(f"patch PCA: {pca.components.shape[0]} -> {pca.dim} dimensions")
    return True, pca


def _named(store: Store, ids: list[int]) -> str:
    paths = store.paths(ids[:NAMED])
    shown = ", ".join(f"{paths.get(i, '?')} (id {i})" for i in ids[:NAMED])
    return shown + (f" and {len(ids) - NAMED} more" if len(ids) > NAMED else "")


def _check_rows(store: Store, config: EngineConfig, desc_dim: int | None, pca: LocalPCA | None,
                found: _Findings, counts: dict[str, int], *, pca_usable: bool = True) -> np.ndarray:
    """Every row's status and blob sizes (local descriptors only against a usable patch PCA);
    returns the ids of the indexed (ok) rows."""
    ok_ids: list[int] = []
    skipped = 0
    bad_status: list[int] = []
    no_desc: list[int] = []
    by_size: dict[int, list[int]] = {}
    local_rows = 0
    local_bad: list[int] = []
    local_orphans: list[int] = []
    for r in store.blob_sizes():
        if r.status == "skipped":
            skipped += 1
            continue
        if r.status != "ok":
            bad_status.append(r.id)
            continue
        ok_ids.append(r.id)
        if not r.descriptor:
            no_desc.append(r.id)
        else:
            by_size.setdefault(r.descriptor, []).append(r.id)
        if r.local_feats is None and r.local_coords is None:
            continue  # made later, on demand (rows embedded before the patch PCA existed)
        local_rows += 1
        if pca is None:
            local_orphans += [r.id] if pca_usable else []  # a damaged PCA is reported once, not per row
        elif not local.blobs_fit(r.local_feats, r.local_coords, (r.grid_h, r.grid_w), pca.dim):
            local_bad.append(r.id)
    counts.update(images=len(ok_ids), skipped=skipped)
    if bad_status:
        found.error(f"{_rows(len(bad_status))} a status other than ok or skipped: {_named(store, bad_status)}; "
                    f"remove them with `retrieve remove PATH` and run `retrieve index` again")
    if no_desc:
        found.error(f"{_rows(len(no_desc), 'indexed ')} no descriptor: {_named(store, no_desc)}; remove them with "
                    f"`retrieve remove PATH` and run `retrieve index` again")
    want = None if desc_dim is None else descriptor_bytes(desc_dim)
    if want is None and by_size:  # a backbone this program does not know: the rows agree with each other
        want = Counter({size: len(i) for size, i in by_size.items()}).most_common(1)[0][0]
    wrong = sorted(i for size, rows in by_size.items() if size != want for i in rows)
    if wrong:
        found.error(f"{_rows(len(wrong), 'indexed ')} a descriptor of the wrong size (expected {want} bytes, "
                    f"{(want or 0) // 4} float32 values): {_named(store, wrong)}; remove them with "
                    f"`retrieve remove PATH` and run `retrieve index` again")
    good = len(ok_ids) - len(no_desc) - len(wrong)
    if good:
        found.ok(f"{_rows(good, 'indexed ')} {want}-byte descriptors ({(want or 0) // 4} float32 values); "
                 f"{skipped} skipped rows")
    elif not ok_ids:
        found.ok(f"no indexed rows; {skipped} skipped rows")
    _report_local(store, found, pca, local_rows, local_bad, local_orphans)
    return np.array(sorted(ok_ids), np.int64)


def _report_local(store: Store, found: _Findings, pca: LocalPCA | None, local_rows: int, local_bad: list[int],
                  local_orphans: list[int]) -> None:
    """What `_check_rows` found of the rows' local descriptors (`local_rows` of them have some)."""
    if local_orphans:
        found.error(f"{_rows(len(local_orphans))} local descriptors but the store has no patch PCA to read them "
                    f"with: {_named(store, local_orphans)}; restore a backup or index the folders again into a new "
                    f"--index")
    if local_bad:
        found.error(f"{_rows(len(local_bad))} local descriptors that do not fit their grid or the patch PCA's "
                    f"{pca.dim if pca else '?'} dimensions: {_named(store, local_bad)}; remove them with "
                    f"`retrieve remove PATH` and run `retrieve index` again")
    if local_rows and pca is not None and not local_bad:
        found.ok(f"{_rows(local_rows)} local descriptors consistent with their grids")


def _rows(n: int, kind: str = "") -> str:
    return f"{n} {kind}row has" if n == 1 else f"{n} {kind}rows have"


def _whitening(store: Store, desc_dim: int | None, found: _Findings) -> tuple[bool, wh.Whitening | None]:
    """(usable, the whitening in force): read by the engine's own reader, derived.fitted, so what
    the engine refuses is an error here and nothing else is."""
    readable, _ = _meta(store, WHITENING, found)
    if not readable:
        return False, None
    try:
        state = fitted(store, dim_in=desc_dim)
    except ArtifactMismatchError as e:
        found.error(str(e))
        return False, None
    w = None if state is None else state.whitening
    if state is None or w is None:
        found.ok("whitening: none (descriptors are only L2-normalised)")
    elif state.data_version != store.data_version:
        found.note("whitening was fitted before the rows last changed; the next `retrieve index` refits it")
    else:
        found.ok(f"whitening: PCA {w.dim_in} -> {w.dim_out}, fitted on {w.fitted_on} descriptors")
    return True, w


def _check_vectors(path: Path, store: Store, config: EngineConfig, ids: np.ndarray, dim: int | None,
                   found: _Findings) -> None:
    file = path / VECTORS_FILE
    if not file.exists():
        found.note(f"{file} does not exist; it is built from the store on next use")
        return
    fingerprint = vectors_fingerprint(store, config)
    try:
        with open(file, "rb") as f:  # ivfpq's exact file: its checksums are verified below, all of them
            vec = vindex.from_file(f, fingerprint=fingerprint, data_version=store.data_version, source=str(file),
                                   exact_path=path / EXACT_FILE, verify=False)
    except ArtifactMismatchError as e:  # stale, from another setup, or unreadable: the engine rebuilds it
        found.note(f"{e}; it is rebuilt from the store on next use")
        return
    except OSError as e:
        found.note(f"{file} cannot be read ({e.strerror or e}); it is rebuilt from the store on next use")
        return
    fix = f"delete {file}: it is rebuilt from the store on next use"
    bad = vindex.damaged_blocks(vec) if vec.kind == "ivfpq" else []
    if bad:
        found.error(f"{path / EXACT_FILE} is damaged: {vindex.damage(vec, bad)} (changed since it was written); it "
                    f"is derived from the store: delete it, and the next `retrieve query` or `retrieve index` "
                    f"rebuilds it", derived=True)
    elif not np.array_equal(np.sort(vec.ids()), ids):
        found.error(f"{file} holds {vec.ntotal} vectors whose ids differ from the store's {len(ids)} indexed rows, "
                    f"although it claims the store's data version; {fix}", derived=True)
    elif dim is not None and len(ids) and vec.dim != dim:
        found.error(f"{file} holds {vec.dim}-d vectors, the store's descriptors give {dim}-d ones; {fix}",
                    derived=True)
    else:
        sums = f"; {path / EXACT_FILE} passes its {len(vec.exact_crc)} block checksums" \
            if vec.exact_crc is not None else ""
        found.ok(f"{file} matches the store: {vec.ntotal} vectors ({vec.kind}), data version {store.data_version}"
                 + sums)


def backup_store(path: str | Path, dest: str | Path) -> tuple[Path, int]:
    """Copy the store of the index folder `path` to `dest` (a file, or a folder that then gets
    store.sqlite: files.backup_target) with SQLite's online backup: a consistent snapshot of what was committed, even
    while `retrieve index` writes. The copy must pass SQLite's integrity check before it replaces
    `dest` (temp file, fsync, os.replace), so a damaged store never overwrites a good backup.
    Returns (the file written, indexed images in it)."""
    path = Path(path)
    source = path / STORE_FILE
    if not source.is_file():
        raise RetrievalError(f"no index at {path} (no {STORE_FILE}); pass the index folder with --index")
    out = backup_target(dest)
    if out.exists() and out.resolve() == source.resolve():
        raise RetrievalError(f"{out} is the index's own store; back it up to another file or folder")
    live = [p for p in _sidecars(out) if p.exists()]
    if live:
        raise RetrievalError(f"{out} is in use as a live database ({live[0]} exists beside it); back up to another "
                             f"file or folder")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with Store(source, migrate=False) as store:
            store.backup(tmp)
        try:
            with Store(tmp, migrate=False) as copy:
                problems = copy.integrity_check()
                images = copy.count("ok")
        except StoreCorruptError as e:
            problems = [e.detail]
        if problems:
            kept = f"{out} was left as it was" if out.exists() else f"nothing was written to {out}"
            raise StoreCorruptError(source, f"a copy of it fails SQLite's integrity check: {problems[0]}; {kept}")
        _fsync(tmp)
        os.replace(tmp, out)
        _fsync(out.parent)
    finally:
        for p in (tmp, *_sidecars(tmp)):
            p.unlink(missing_ok=True)
    return out, images


def _sidecars(db: Path) -> Iterable[Path]:
    return (db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))


def _fsync(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

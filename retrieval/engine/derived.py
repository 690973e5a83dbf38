"""What an index derives from its store: the whitening and the FAISS vectors, rebuilt whenever the
stored descriptors (or the settings they depend on) change. numpy and FAISS; no model."""

from __future__ import annotations

import dataclasses
import errno
import logging
from pathlib import Path
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .. import rerank as rr
from .. import vectors as vecs
from .. import whitening as wh
from ..arrays import l2n
from ..backbone import registry
from ..config import EngineConfig
from ..errors import ArtifactMismatchError, DiskFullError, RetrievalError
from ..store import Store
from .files import EXACT_FILE, VECTORS_FILE, atomic_write
from .settings import digest, fingerprint

log = logging.getLogger(__name__)
T = TypeVar("T")

WHITEN_SAMPLE_MAX = 200_000  # whitening is fitted on at most this many stored descriptors (seeded sample)
STREAM_CHUNK = 50_000  # rows read from the store at once while an ivfpq index is built


WHITENING = "whitening"  # the store's meta entry of the whitening record (whitening.encode / decode)


def read_meta(store: Store, key: str, decode: Callable[[Any], T], fix: str) -> T | None:
    """The meta entry `key` read by its artefact's one decoder (None when there is none), for the
    engine and `retrieve check` alike: what `decode` refuses is an ArtifactMismatchError naming the
    store and the `fix`."""
    value = store.get_meta(key)
    if value is None:
        return None
    try:
        return decode(value)
    except ArtifactMismatchError as e:
        raise ArtifactMismatchError(f"{store.path}: {e}; {fix}") from None


def fitted(store: Store, *, dim_in: int | None = None) -> wh.Fitted | None:
    """The whitening record of the store, decoded and checked by whitening.decode (None: never
    fitted)."""
    return read_meta(store, WHITENING, lambda record: wh.decode(record, dim_in=dim_in),
                     f"run `retrieve index DIR --index {store.path.parent} --refit-whitening` (refits it from the "
                     f"stored descriptors)")


def whitening(store: Store, *, dim_in: int | None = None) -> wh.Whitening | None:
    """The whitening in force (None: descriptors are only L2-normalised), checked as `fitted` does."""
    state = fitted(store, dim_in=dim_in)
    return None if state is None else state.whitening


def descriptor_dim(config: EngineConfig) -> int | None:
    """Length of a global descriptor under `config`, when its backbone is a known one."""
    arch = registry().get(config.backbone.name)
    if arch is None:
        return None
    return arch.dim * (2 if config.pooling.pooling == "cls+gem" else 1)


class Refit(NamedTuple):
    """What `refit` did: fitted (it refitted the whitening in this call, whatever came of it: a
    whitening or none) and data (the store's (ids, raw descriptors) when it read them all)."""

    fitted: bool
    data: tuple[np.ndarray, np.ndarray] | None


def _stale(store: Store, config: EngineConfig) -> bool:
    """Whether the whitening must be refitted: never fitted, fitted for other rows or settings,
    or damaged."""
    try:
        state = fitted(store)
    except ArtifactMismatchError as e:
        log.warning("refitting the whitening: %s", e)
        return True
    return (state is None or state.data_version != store.data_version
            or state.settings != dataclasses.asdict(config.whitening))


def refit(store: Store, config: EngineConfig, *, force: bool = False) -> Refit:
    """Refit the whitening if the data or its settings changed since it was fitted, or it is
    damaged (or when forced): on every stored descriptor, or on a sample of WHITEN_SAMPLE_MAX of
    them when the store holds more."""
    if not (force or _stale(store, config)):
        return Refit(False, None)
    n = store.count("ok")
    stored: tuple[np.ndarray, np.ndarray] | None
    if n > WHITEN_SAMPLE_MAX:  # a large store: a seeded uniform sample, never every descriptor at once
        ids = store.descriptor_ids()
        pick = np.sort(np.random.default_rng(0).choice(len(ids), WHITEN_SAMPLE_MAX, replace=False))
        stored, w = None, _fit(store.descriptors_of(ids[pick]), config)
    else:
        stored = store.descriptors()
        w = _fit(stored[1], config)
    log.debug("whitening %s", "not fitted (too few images, or disabled)" if w is None
              else f"fitted on {w.fitted_on} descriptors: {w.dim_in} -> {w.dim_out} dimensions")
    set_whitening(store, config, w)
    return Refit(True, stored)


def set_whitening(store: Store, config: EngineConfig, w: wh.Whitening | None, source: str | None = None) -> None:
    """Put a whitening in force for the store's current data: fitted here (`refit`), or learned
    elsewhere (another benchmark, or an evaluation's explicit choice; `source` says where it came
    from), which `refit` keeps until the rows or the whitening settings change."""
    record = wh.encode(wh.Fitted(w, store.data_version, dataclasses.asdict(config.whitening), source))
    store.set_meta(**{WHITENING: record})


def _fit(x: np.ndarray, config: EngineConfig) -> wh.Whitening | None:
    cfg = config.whitening
    n = x.shape[0]
    if not cfg.enabled or n == 0 or n < max(cfg.min_images, 2 * x.shape[1]):
        return None
    dim = None if cfg.dim is None else min(cfg.dim, x.shape[1])
    return wh.fit(x, dim=dim)


def vectors_fingerprint(store: Store, config: EngineConfig) -> str:
    return _fingerprint(store, config, fitted(store))


def _fingerprint(store: Store, config: EngineConfig, state: wh.Fitted | None) -> str:
    """vectors_fingerprint with the whitening record already decoded (`state`)."""
    icfg = config.index
    return digest({"store": fingerprint(config, store.get_meta("weights_id")), "store_id": store.get_meta("store_id"),
                   "whitening": None if state is None else state.digest, "kind": icfg.kind,
                   "dba": [icfg.dba, icfg.dba_alpha] if icfg.dba else None})


def ensure_vectors(store: Store, config: EngineConfig, folder: Path, *, cached: vecs.VectorIndex | None = None,
                   data: tuple[np.ndarray, np.ndarray] | None = None) -> vecs.VectorIndex:
    """The FAISS index (in host memory) for the store's current data version: `cached` if it is
    that, else the saved file if it is, else rebuilt from the store and saved atomically (kept in
    memory only when the store is read-only: nothing beside it is rewritten).
    data: the store's (ids, raw descriptors) when the caller has just read them."""
    state = fitted(store, dim_in=descriptor_dim(config))  # decoded once: the fingerprint's, and the rebuild's
    gen, fp = store.data_version, _fingerprint(store, config, state)
    if cached is not None and cached.data_version == gen and cached.fingerprint == fp:
        return cached
    file = folder / VECTORS_FILE
    try:
        return _read(store, folder, fp)
    except ArtifactMismatchError as e:
        if file.exists():  # stale after every change of the rows: routine, so debug detail (-v)
            log.debug("rebuilding the vector index from the store: %s", e)
    w = None if state is None else state.whitening
    n = store.count("ok") if data is None else len(data[0])
    kind = vecs.choose_kind(config.index.kind, n)
    if kind == "ivfpq" and config.index.dba > 0:  # auto past AUTO_EXACT_MAX (config refuses ivfpq + dba)
        log.info("database-side augmentation needs every vector's neighbours: an IVF index, not ivfpq")
        kind = "ivf"
    if kind == "ivfpq" and n > 0:
        if store.readonly:  # its exact vectors are a file, memory-mapped: no ivfpq index without writing one
            raise RetrievalError(f"the ivfpq vector index of {folder} must be rebuilt and the folder is read-only; "
                                 f"open the index once where it is writable (any `retrieve query` rebuilds it), or "
                                 f"use a writable copy")
        built = _streamed(store, w, n, fp, gen, folder / EXACT_FILE)
    else:
        ids, x = data if data is not None else store.descriptors()
        xb = np.zeros((0, 1), np.float32) if len(ids) == 0 else (w.apply(x) if w is not None else l2n(x))
        if config.index.dba > 0 and len(ids) > 1:
            exact = vecs.build(xb, np.arange(len(xb)), kind="flat", fingerprint="dba", data_version=0)
            sims, nbrs = exact.search(xb, config.index.dba + 1)
            xb = rr.database_augmentation(xb, nbrs, sims, alpha=config.index.dba_alpha)
        built = vecs.build(xb, ids, kind="flat" if kind == "ivfpq" else kind, fingerprint=fp, data_version=gen)
    log.debug("vector index built: %s, %d vectors of dimension %d", built.kind, built.ntotal, built.dim)
    if store.readonly:
        log.warning("%s is read-only: the vector index was rebuilt in memory for this run only; open the index once "
                    "where it is writable (any `retrieve query`) to save it", folder)
        return built
    try:
        atomic_write(file, lambda f: f.write(vecs.to_bytes(built)))
    except OSError as e:  # a read-only or full index folder still answers queries
        reason = DiskFullError(file, e.strerror or str(e)) if e.errno == errno.ENOSPC else e
        log.warning("could not save the vector index: %s; it will be rebuilt next time", reason)
    if built.kind != "ivfpq":  # an earlier ivfpq build's exact file is stale now
        (folder / EXACT_FILE).unlink(missing_ok=True)
    return built


def _streamed(store: Store, w: wh.Whitening | None, n: int, fp: str, gen: int, exact: Path) -> vecs.VectorIndex:
    """The ivfpq index, built from the store chunk by chunk: trained on a seeded sample of rows
    (vecs.train_rows), then STREAM_CHUNK rows at a time whitened, coded and written to `exact`."""
    def prep(x: np.ndarray) -> np.ndarray:
        return w.apply(x) if w is not None else l2n(x)

    ids = store.descriptor_ids()
    rows = vecs.train_rows("ivfpq", n)
    sample = prep(store.descriptors_of(ids[rows]))
    chunks = ((i, prep(x)) for i, x in store.descriptors_chunks(STREAM_CHUNK))
    try:
        return vecs.build_chunked(sample, chunks, n=len(ids), dim=sample.shape[1], kind="ivfpq", fingerprint=fp,
                                  data_version=gen, exact_path=exact)
    except OSError as e:  # the exact file is needed to search: no index without it
        if e.errno == errno.ENOSPC:
            raise DiskFullError(exact, e.strerror or str(e)) from e
        raise RetrievalError(f"cannot write {exact} ({e.strerror or e}); the ivfpq index needs it: "
                             f"make the index folder writable") from e


def read_vectors(store: Store, config: EngineConfig, folder: Path, *, header_only: bool = False) -> Any:
    """The saved FAISS index if it matches the store (its header alone with header_only);
    ArtifactMismatchError otherwise. A stale file is recognised without reading its vectors."""
    return _read(store, folder, vectors_fingerprint(store, config), header_only=header_only)


def _read(store: Store, folder: Path, fp: str, *, header_only: bool = False) -> Any:
    """read_vectors against the fingerprint `fp` (the caller's, made from a decoded whitening)."""
    file = folder / VECTORS_FILE
    version, source = store.data_version, f"vector index {file}"
    try:
        with open(file, "rb") as f:
            if header_only:
                return vecs.header(f, fingerprint=fp, data_version=version, source=source)
            return vecs.from_file(f, fingerprint=fp, data_version=version, source=source, exact_path=folder / EXACT_FILE)
    except OSError as e:
        raise ArtifactMismatchError(f"vector index {file} is missing ({e.strerror or e})") from e

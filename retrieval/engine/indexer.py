"""An index folder: SQLite store (truth) + whitening + FAISS vectors (derived), kept in step.

    idx = Index.open_or_create(path, config)   # or Index.open(path) for an existing one
    summary = idx.update(["photos/"])          # only new/changed files reach the model
    hits = idx.search("query.jpg", k=10, bbox=None)
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import images, local, pooling
from .. import rerank as rr
from .. import index as vindex
from .. import whitening as wh
from ..backbone import Backbone, load_backbone, native_dtype, resolve_device
from ..backbone.weights import file_sha256
from ..config import EngineConfig, deep_merge
from ..discover import discover
from ..errors import ArtifactMismatchError, BadImageError, DiskFullError, RetrievalError
from ..local import LocalPCA
from ..store import PathFilter, Store, Upsert
from .embedding import Batch, Decoded, Skipped, decoded_stream, forward_batches, jpeg_device
from .files import atomic_write

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
VECTORS_FILE = "vectors.npz"
LOCK_FILE = "lock"
LOCAL_PCA_SAMPLE = 50_000  # patch tokens the local PCA is fitted on (from the first batch indexed)


@dataclass(frozen=True)
class Embedding:
    """One file's result: raw global descriptor (D,), grid (h, w) of the first scale, and either its
    local descriptors (when the index's patch PCA existed at embedding time) or its patch tokens
    (h*w, d), from which they are made once the PCA exists."""

    decoded: Decoded
    descriptor: np.ndarray
    patches: np.ndarray | None
    grid: tuple[int, int]
    features: local.LocalFeatures | None = None

    def local_features(self, pca: LocalPCA | None) -> local.LocalFeatures | None:
        if self.features is not None:
            return self.features
        return None if pca is None or self.patches is None else local.select(self.patches, self.grid, pca)


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    score: float  # global similarity (cosine of the indexed vectors)
    path: str
    id: int
    inliers: int | None = None  # geometrically verified patch matches, when re-ranked


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits: ids unique, ranks 1..n, ordered by decreasing score, or when re-ranked by
    decreasing verified inliers (rerank.rerank_order's key) and then score."""

    hits: tuple[Hit, ...]
    reranked: bool = False

    def __post_init__(self) -> None:
        def key(h: Hit) -> tuple[int, float]:
            verified = h.inliers if self.reranked and h.inliers is not None and h.inliers >= rr.MIN_INLIERS else 0
            return verified, h.score

        keys = [key(h) for h in self.hits]
        if any(a[0] < b[0] or (a[0] == b[0] and a[1] < b[1] - 1e-6) for a, b in zip(keys, keys[1:])):
            raise ValueError("hits are not in ranking order")
        if len({h.id for h in self.hits}) != len(self.hits):
            raise ValueError("hit ids must be unique")
        if [h.rank for h in self.hits] != list(range(1, len(self.hits) + 1)):
            raise ValueError("ranks must be 1..n")

    def to_json(self) -> list[dict[str, Any]]:
        return [{"rank": h.rank, "score": h.score, "path": h.path,
                 **({"inliers": h.inliers} if h.inliers is not None else {})} for h in self.hits]


@dataclass
class UpdateSummary:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    to_embed: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    whitened: bool = False


def fingerprint_fields(config: EngineConfig) -> dict[str, Any]:
    """What the stored descriptors depend on (besides the weights, hashed separately)."""
    return {"backbone": config.backbone.name, "dtype": config.backbone.dtype, "size": config.image.size,
            "pooling": dataclasses.asdict(config.pooling)}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class Index:
    def __init__(self, path: str | Path, store: Store, config: EngineConfig) -> None:
        self.path = Path(path)
        self.store = store
        self.config = config
        self._backbone: Backbone | None = None
        self._vectors: vindex.VectorIndex | None = None

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> Index:
        """An existing index; RetrievalError if there is none."""
        path = Path(path)
        db = path / STORE_FILE
        if not db.is_file():
            raise RetrievalError(f"no index at {path}; create one with `retrieve index DIR` (or pass --index)")
        store = Store(db)
        stored = store.get_meta("config")
        if stored is None:
            store.close()
            raise RetrievalError(f"index at {path} was never configured; run `retrieve index DIR --index {path}`")
        return cls(path, store, EngineConfig.from_dict(stored))

    @classmethod
    def open_or_create(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Index:
        """Open with `overrides` (nested dict of config fields) merged over the stored config.

        A new index takes defaults + overrides. An existing one refuses overrides that would
        change its descriptors (model, dtype, size, pooling), naming the fix.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        store = Store(path / STORE_FILE, create=True)
        stored = store.get_meta("config")
        base = EngineConfig() if stored is None else EngineConfig.from_dict(stored)
        try:
            config = EngineConfig.from_dict({**deep_merge(base.to_dict(), overrides or {})})
        except ValueError:
            store.close()
            raise
        if config.backbone.dtype == "auto":  # an index keeps one concrete dtype, whichever machine opens it
            concrete = native_dtype(resolve_device(config.backbone.device))
            config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, dtype=concrete))
        if store.count() == 0 and any(store.get_meta(k) is not None for k in ("weights_id", "local_pca", "whitening")):
            # an empty index may change its model freely: forget everything learned from the old one
            store.set_meta(weights_id=None, local_pca=None, whitening=None)
        if store.get_meta("store_id") is None:  # tells this store's artefacts from a deleted one's
            store.set_meta(store_id=uuid.uuid4().hex)
        if stored is not None and store.count() > 0 and fingerprint_fields(config) != fingerprint_fields(base):
            store.close()
            raise ArtifactMismatchError(
                f"index at {path} holds descriptors made with {fingerprint_fields(base)}; the options ask for "
                f"{fingerprint_fields(config)}; use another --index folder for a different setup"
            )
        known = store.get_meta("weights_id")
        new_weights = config.backbone.weights
        if known is not None and new_weights and new_weights != base.backbone.weights:
            _check_weights_file(new_weights, known, path, store)
        as_stored = json.loads(json.dumps(config.to_dict()))
        as_stored["backbone"]["device"] = None  # a device is this run's choice, not the index's
        if as_stored != stored:
            store.set_meta(config=as_stored)
        return cls(path, store, config)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- backbone ---------------------------------------------------------------------------
    def backbone(self, *, weights: str | None = None, device: str | None = None) -> Backbone:
        """The index's backbone; its weights must hash to what the index was built with."""
        if self._backbone is None:
            cfg = self.config.backbone
            hashes: dict[str, str] = dict(self.store.get_meta("weights_hashes") or {})
            before = dict(hashes)
            bb = load_backbone(cfg.name, weights=weights or cfg.weights, device=device or cfg.device, dtype=cfg.dtype,
                               hash_cache=hashes)
            if hashes != before:
                self.store.set_meta(weights_hashes=dict(list(hashes.items())[-8:]))
            known = self.store.get_meta("weights_id")
            if known is None:
                self.store.set_meta(weights_id=bb.weights_id, fingerprint=self.fingerprint(bb.weights_id))
            elif known != bb.weights_id:
                raise ArtifactMismatchError(
                    f"weights {weights or cfg.weights or 'official ' + cfg.name} ({bb.weights_id[:20]}...) differ "
                    f"from those the index at {self.path} was built with ({known[:20]}...); pass the original "
                    f"file with --weights"
                )
            self._backbone = bb
        return self._backbone

    def fingerprint(self, weights_id: str | None = None) -> str:
        return _digest({**fingerprint_fields(self.config), "weights": weights_id or self.store.get_meta("weights_id")})

    # --- embedding --------------------------------------------------------------------------
    def _complete(self, batch: Batch, partial: dict[int, dict[str, Any]], pca: LocalPCA | None) -> list[Embedding]:
        """Pool one forward pass; return files whose every scale is now done: raw global descriptor
        (averaged over scales, then L2-normalised) and the first scale's local descriptors, made
        where the model ran (or its patch tokens while there is no `pca` yet)."""
        pcfg = self.config.pooling
        desc = pooling.global_descriptor(batch.tokens.cls, batch.tokens.patches, pooling=pcfg.pooling, p=pcfg.gem_p)
        desc_np = desc.cpu().numpy()
        first = [j for j, (_, s) in enumerate(batch.items) if s == 0]
        feats: dict[int, local.LocalFeatures] = {}
        # on a GPU only the kept features come back; on a CPU the tokens stay and local_features
        # selects per image later (3.6x faster there: cache-sized temporaries)
        if pca is not None and first and batch.tokens.patches.device.type != "cpu":
            feats = dict(zip(first, local.select_many(batch.tokens.patches[first], batch.tokens.grid, pca)))
        done = []
        for j, (d, s) in enumerate(batch.items):
            got = partial.setdefault(d.index, {"descs": [], "patches": None, "features": None})
            got["descs"].append(desc_np[j])
            if s == 0:
                if j in feats:
                    got["features"] = feats[j]
                else:
                    got["patches"] = batch.tokens.patches[j].cpu().numpy()
                got["grid"] = batch.tokens.grid
            if len(got["descs"]) == len(pcfg.scales):
                del partial[d.index]
                raw = wh.l2n(np.mean(got["descs"], axis=0, keepdims=True))[0]
                done.append(Embedding(d, raw, got["patches"], got["grid"], got["features"]))
        return done

    def embed_files(self, paths: Sequence[str], *, workers: int | None = None,
                    pca: Callable[[], LocalPCA | None] = lambda: None) -> Iterator[list[Embedding | Skipped]]:
        """Descriptor results, grouped per forward pass (the unit committed to the store); `pca`
        gives the patch PCA to make local descriptors with, as it stands at each batch."""
        bb = self.backbone()
        stream = decoded_stream(paths, backbone=bb, image=self.config.image, scales=self.config.pooling.scales,
                                workers=self.config.workers if workers is None else workers,
                                jpegs_on=jpeg_device(self.config.decode, bb.device), jpeg_batch=self.config.batch_size)
        partial: dict[int, dict[str, Any]] = {}
        group: list[Embedding | Skipped] = []
        for out in forward_batches(stream, backbone=bb, batch_size=self.config.batch_size):
            if isinstance(out, Skipped):
                group.append(out)
                if len(group) < self.config.batch_size:
                    continue
            else:
                group.extend(self._complete(out, partial, pca()))
            if group:
                yield group
                group = []
        if group:
            yield group

    # --- local descriptors ------------------------------------------------------------------
    def local_pca(self, sample: Sequence[np.ndarray] = (), *, save: bool = True) -> LocalPCA | None:
        """The index's patch PCA; fitted (once, then frozen) on `sample` patch sets if there is none
        and they hold at least MIN_FIT_PATCHES tokens (else None: not enough to learn from).
        save=False makes a throw-away one for a query on an index without one (identity if the
        sample is too small to fit)."""
        stored = self.store.get_meta("local_pca")
        if stored is not None:
            return LocalPCA.from_bytes(base64.b64decode(stored))
        if not sample:
            return None
        allp = np.concatenate(list(sample))
        if not save and len(allp) < local.MIN_FIT_PATCHES:
            return local.identity(allp.shape[1]) if len(allp) < 2 else local.fit_pca(allp, dim=local.DEFAULT_DIM)
        if save and len(allp) < local.MIN_FIT_PATCHES:
            return None
        if len(allp) > LOCAL_PCA_SAMPLE:
            allp = allp[np.random.default_rng(0).choice(len(allp), LOCAL_PCA_SAMPLE, replace=False)]
        pca = local.fit_pca(allp, dim=local.DEFAULT_DIM)
        if save:
            self.store.set_meta(local_pca=base64.b64encode(pca.to_bytes()).decode())
        return pca

    # --- update -----------------------------------------------------------------------------
    def update(self, roots: Sequence[str | Path], *, retry_skipped: bool = False,
               should_stop: Callable[[], bool] = lambda: False,
               on_progress: Callable[[int, int], None] | None = None) -> UpdateSummary:
        """Bring the index in line with the files under `roots` (see docs/index.md)."""
        start = time.monotonic()
        summary = UpdateSummary()
        with _lock(self.path / LOCK_FILE):
            roots_abs = [os.path.abspath(r) for r in roots]
            for r in roots_abs:
                if not os.path.exists(r):
                    raise RetrievalError(f"{r} does not exist; pass a folder of images")
            unreadable: list[str] = []
            found = list(discover(roots_abs, extensions=images.IMAGE_EXTENSIONS, exclude=[self.path],
                                  unreadable=unreadable))
            keep = PathFilter(unreadable)  # rows under folders we could not list are not "deleted"
            existing = {row.path: row for row in self.store.rows(under=roots_abs) if row.path not in keep}
            todo: list[str] = []
            known: set[str] = set()
            touches: list[tuple[int, int, int]] = []
            for ref in found:
                row = existing.pop(ref.path, None)
                if row is None:
                    todo.append(ref.path)
                    continue
                known.add(ref.path)
                if row.status == "skipped" and retry_skipped:
                    todo.append(ref.path)
                    continue
                if row.size == ref.size and row.mtime_ns == ref.mtime_ns:
                    summary.unchanged += 1
                    continue
                if row.sha256 and row.size == ref.size and file_sha256(ref.path) == row.sha256:
                    touches.append((row.id, ref.size, ref.mtime_ns))  # same bytes, new timestamp
                    summary.unchanged += 1
                    continue
                todo.append(ref.path)
            if existing or touches:
                self.store.apply(deletes=[r.id for r in existing.values()], touches=touches)
                summary.removed = len(existing)
            summary.to_embed = len(todo)
            stats = {r.path: r for r in found}  # discover yields absolute paths
            done = 0
            if todo:
                seen_patches: list[np.ndarray] = []  # until the patch PCA can be fitted
                pca = self.local_pca()
                for group in self.embed_files(todo, pca=lambda: pca):
                    upserts = []
                    if pca is None:
                        seen_patches += [e.patches for e in group if isinstance(e, Embedding) and e.patches is not None]
                        pca = self.local_pca(seen_patches)
                    for item in group:
                        path = item.path if isinstance(item, Skipped) else item.decoded.path
                        ref_ = stats[path]
                        if isinstance(item, Skipped):
                            summary.skipped.append((path, item.reason))
                            upserts.append(Upsert(path, ref_.size, ref_.mtime_ns, None, "skipped", item.reason))
                        else:
                            d = item.decoded
                            # until the PCA exists, rows get no local descriptors (recomputed when needed)
                            lf = item.local_features(pca)
                            feats, coords = local.pack(lf) if lf is not None else (None, None)
                            upserts.append(Upsert(path, ref_.size, ref_.mtime_ns, d.sha256, "ok",
                                                  width=d.size[0], height=d.size[1], descriptor=item.descriptor,
                                                  local_feats=feats, local_coords=coords, grid=item.grid))
                            if path in known:
                                summary.updated += 1
                            else:
                                summary.added += 1
                    self.store.apply(upserts)
                    done += len(group)
                    if on_progress is not None:
                        on_progress(done, len(todo))
                    if should_stop():
                        summary.interrupted = True
                        break
            summary.whitened = self.refresh() is not None
        summary.seconds = time.monotonic() - start
        return summary

    # --- derived artefacts ------------------------------------------------------------------
    def whitening(self) -> wh.Whitening | None:
        state = self.store.get_meta("whitening")
        if not state or state.get("data") is None:
            return None
        return wh.Whitening.from_bytes(base64.b64decode(state["data"]))

    def refresh(self, *, refit: bool = False) -> wh.Whitening | None:
        """Refit whitening if the data changed since it was fitted (or when asked), then make
        sure the FAISS index matches the store's data version; returns the whitening in force."""
        state = self.store.get_meta("whitening")
        stale = (state is None or state.get("for_data_version") != self.store.data_version
                 or state.get("config") != dataclasses.asdict(self.config.whitening))
        stored: tuple[np.ndarray, np.ndarray] | None = None
        if refit or stale:
            stored = self.store.descriptors()  # read once: for the fit and for the rebuild below
            w = self._fit_whitening(stored[1])
            blob = None if w is None else base64.b64encode(w.to_bytes()).decode()
            self.store.set_meta(whitening={"for_data_version": self.store.data_version, "data": blob,
                                           "digest": None if w is None else w.digest(),
                                           "config": dataclasses.asdict(self.config.whitening)})
        self.vectors(data=stored)
        return self.whitening()

    def _fit_whitening(self, x: np.ndarray) -> wh.Whitening | None:
        cfg = self.config.whitening
        n = x.shape[0]
        if not cfg.enabled or n == 0 or n < max(cfg.min_images, 2 * x.shape[1]):
            return None
        dim = None if cfg.dim is None else min(cfg.dim, x.shape[1])
        return wh.fit(x, dim=dim)

    def _vectors_fingerprint(self) -> str:
        state = self.store.get_meta("whitening") or {}
        icfg = self.config.index
        return _digest({"store": self.fingerprint(), "store_id": self.store.get_meta("store_id"),
                        "whitening": state.get("digest"), "kind": icfg.kind,
                        "dba": [icfg.dba, icfg.dba_alpha] if icfg.dba else None})

    def vectors(self, *, data: tuple[np.ndarray, np.ndarray] | None = None) -> vindex.VectorIndex:
        """The FAISS index for the store's current data version: loaded, or rebuilt and saved.
        data: the store's (ids, raw descriptors) when the caller has just read them."""
        gen = self.store.data_version
        fp = self._vectors_fingerprint()
        if self._vectors is not None and self._vectors.generation == gen and self._vectors.fingerprint == fp:
            return self._vectors
        file = self.path / VECTORS_FILE
        try:
            self._vectors = self._read_vectors()
            return self._vectors
        except ArtifactMismatchError as e:
            if file.exists():
                log.info("rebuilding the vector index from the store: %s", e)
        ids, x = data if data is not None else self.store.descriptors()
        w = self.whitening()
        xb = np.zeros((0, 1), np.float32) if len(ids) == 0 else (w.apply(x) if w is not None else wh.l2n(x))
        if self.config.index.dba > 0 and len(ids) > 1:
            exact = vindex.build(xb, np.arange(len(xb)), kind="flat", fingerprint="dba", generation=0, use_gpu=False)
            sims, nbrs = exact.search(xb, self.config.index.dba + 1)
            xb = rr.database_augmentation(xb, nbrs, sims, alpha=self.config.index.dba_alpha)
        built = vindex.build(xb, ids, kind=self.config.index.kind, fingerprint=fp, generation=gen,
                             use_gpu=self.config.index.gpu, device=self._search_device())
        try:
            atomic_write(file, lambda f: f.write(vindex.to_bytes(built)))
        except OSError as e:  # a read-only or full index folder still answers queries
            reason = DiskFullError(file, e.strerror or str(e)) if e.errno == errno.ENOSPC else e
            log.warning("could not save the vector index: %s; it will be rebuilt next time", reason)
        self._vectors = built
        return built

    def _search_device(self) -> str:
        """The CUDA device exact search uses: the model's (`--device cuda:1`), else the first."""
        device = self.config.backbone.device
        return device if device is not None and device.startswith("cuda") else "cuda"

    def _read_vectors(self, *, header_only: bool = False) -> Any:
        """The saved FAISS index if it matches the store (its header alone with header_only);
        ArtifactMismatchError otherwise. A stale file is recognised without reading its vectors."""
        file = self.path / VECTORS_FILE
        fp, version, source = self._vectors_fingerprint(), self.store.data_version, f"vector index {file}"
        try:
            with open(file, "rb") as f:
                if header_only:
                    return vindex.header(f, fingerprint=fp, generation=version, source=source)
                return vindex.from_file(f, fingerprint=fp, generation=version, use_gpu=self.config.index.gpu,
                                        source=source, device=self._search_device())
        except OSError as e:
            raise ArtifactMismatchError(f"vector index {file} is missing ({e.strerror or e})") from e

    # --- query ------------------------------------------------------------------------------
    def query_tokens(self, path: str | Path, *, bbox: tuple[float, float, float, float] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """A query embedded exactly like the database (box-cropped if given): raw descriptor (1, D),
        and the first scale's patch tokens (h*w, d) with their grid."""
        bb = self.backbone()
        sizes = [images.scaled_size(self.config.image.size, s, bb.patch_size) for s in self.config.pooling.scales]
        # decoded like the database (JPEG draft at the largest size); a box needs the full picture
        im, original = images.decode(path, max_pixels=self.config.image.max_pixels,
                                     min_side_hint=None if bbox is not None else max(sizes))
        descs, first = [], None
        for s in self.config.pooling.scales:
            size = images.scaled_size(self.config.image.size, s, bb.patch_size)
            try:
                x = images.prepare(im, size=size, patch_size=bb.patch_size, mean=bb.mean, std=bb.std, box=bbox,
                                   like=original)
            except ValueError as e:
                raise BadImageError(path, str(e), fix="pass a --bbox inside the image") from e
            t = bb.encode(torch.from_numpy(x)[None])
            d = pooling.global_descriptor(t.cls, t.patches, pooling=self.config.pooling.pooling,
                                          p=self.config.pooling.gem_p)
            descs.append(d.cpu().numpy()[0])
            if first is None:
                first = (t.patches[0].cpu().numpy(), t.grid)
        assert first is not None
        return wh.l2n(np.mean(descs, axis=0, keepdims=True)), first[0], first[1]

    def embed_query(self, path: str | Path, *, bbox: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """(1, D) raw descriptor of a query file, embedded exactly like the database."""
        return self.query_tokens(path, bbox=bbox)[0]

    def _candidate_local(self, ids: Sequence[int], pca: LocalPCA) -> dict[int, local.LocalFeatures]:
        """Stored local descriptors of the candidates; recomputed from the files where missing."""
        out: dict[int, local.LocalFeatures] = {}
        stored = self.store.local(ids)
        missing = [i for i in ids if stored.get(i) is None]
        for i, blob in stored.items():
            if blob is not None:
                out[i] = local.unpack(blob[0], blob[1], blob[2], pca.dim)
        if missing:
            paths = self.store.paths(missing)
            by_path = {p: i for i, p in paths.items()}
            for group in self.embed_files([paths[i] for i in missing], workers=0, pca=lambda: pca):
                for item in group:
                    if isinstance(item, Embedding) and (lf := item.local_features(pca)) is not None:
                        out[by_path[item.decoded.path]] = lf
        return out

    def search(self, path: str | Path, *, k: int = 10, bbox: tuple[float, float, float, float] | None = None,
               rerank: bool = False, rerank_k: int = 100, qe: int = 0, qe_alpha: float = 3.0) -> SearchResult:
        """Top k by global similarity; optionally alpha-query-expanded (qe = how many top results to
        add) and re-ranked by geometrically verified patch matches over the top rerank_k."""
        if self.store.count("ok") == 0:
            raise RetrievalError(f"the index at {self.path} holds no images; run `retrieve index DIR` first")
        if k < 1 or rerank_k < 1 or qe < 0:
            raise ValueError("k and rerank_k must be >= 1 and qe >= 0")
        raw, q_patches, q_grid = self.query_tokens(path, bbox=bbox)
        vec = self.vectors()
        w = self.whitening()
        xq = w.apply(raw) if w is not None else raw
        shortlist = max(k, rerank_k) if rerank else k
        if qe > 0:
            scores, ids = vec.search(xq, qe)
            top = ids[0][ids[0] >= 0]
            xq = rr.query_expansion(xq[0], self._vectors_of(top), scores[0][: len(top)], alpha=qe_alpha)[None]
        scores, ids = vec.search(xq, shortlist)
        valid = ids[0] >= 0
        ids_v, scores_v = ids[0][valid], scores[0][valid]
        inliers: list[int | None] = [None] * len(ids_v)
        if rerank and len(ids_v):
            pca = self.local_pca([q_patches], save=False)
            assert pca is not None
            qf, qxy = pca.project(q_patches), local.grid_xy(q_grid)
            head = min(rerank_k, len(ids_v))  # only the top rerank_k are verified; the rest keep their order
            cands = self._candidate_local([int(i) for i in ids_v[:head]], pca)
            counts = []
            for i in ids_v[:head]:
                c = cands.get(int(i))
                n = 0 if c is None else rr.verify(qf, qxy, c.feats.astype(np.float32), c.xy).n_inliers
                counts.append(n)
            order = np.concatenate([rr.rerank_order(scores_v[:head], counts), np.arange(head, len(ids_v))])
            ids_v, scores_v = ids_v[order], scores_v[order]
            inliers = [counts[j] if j < head else None for j in order]
        ids_v, scores_v, inliers = ids_v[:k], scores_v[:k], inliers[:k]
        found = self.store.paths(ids_v)
        hits = tuple(Hit(rank=r + 1, score=float(s), path=found[int(i)], id=int(i), inliers=n)
                     for r, (s, i, n) in enumerate(zip(scores_v, ids_v, inliers)))
        return SearchResult(hits, reranked=rerank)

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Database vectors (as indexed: whitened, augmented) of the given ids, from the FAISS index."""
        vec = self.vectors()
        index = vec.faiss_index
        return np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, vec.dim), np.float32)

    # --- maintenance ------------------------------------------------------------------------
    def remove(self, paths: Sequence[str | Path]) -> int:
        """Forget files (or everything under folders); returns how many rows went."""
        with _lock(self.path / LOCK_FILE):
            targets = [os.path.abspath(p) for p in paths]
            rows = list(self.store.rows(under=targets))
            if rows:
                self.store.apply(deletes=[r.id for r in rows])
            self.refresh()
            return len(rows)

    def info(self) -> dict[str, Any]:
        w = self.whitening()
        files = {f.name: f.stat().st_size for f in self.path.iterdir() if f.is_file()}
        vec_meta: dict[str, Any] = {"fresh": False}
        try:
            head = self._read_vectors(header_only=True)
            vec_meta = {"fresh": True, "kind": head["kind"], "vectors": head["ntotal"], "dim": head["dim"]}
        except ArtifactMismatchError:
            pass
        return {
            "index": str(self.path.resolve()),
            "images": self.store.count("ok"),
            "skipped": [{"path": p, "reason": r} for p, r in self.store.skipped()],
            "config": self.config.to_dict(),
            "weights_id": self.store.get_meta("weights_id"),
            "fingerprint": self.fingerprint(),
            "schema_version": self.store.schema_version,
            "generation": self.store.generation,
            "whitening": None if w is None else {"fitted_on": w.fitted_on, "dim_in": w.dim_in, "dim_out": w.dim_out},
            "vector_index": vec_meta,
            "bytes_on_disk": sum(files.values()),
            "files": files,
        }


def _check_weights_file(weights: str, known: str, path: Path, store: Store) -> None:
    """A new --weights path for an existing index must hold the same bytes."""
    try:
        digest = "sha256:" + file_sha256(weights)
    except OSError as e:
        store.close()
        raise RetrievalError(f"weights file {weights} cannot be read ({e.strerror or e})") from e
    if digest != known:
        store.close()
        raise ArtifactMismatchError(
            f"weights {weights} differ from those the index at {path} was built with; pass the original file"
        )


class _lock:
    """Exclusive advisory lock on the index folder, so two writers never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RetrievalError(f"another `retrieve` is updating {self.path.parent}; wait for it to finish") from None

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

"""An index folder: SQLite store (truth) + whitening + FAISS vectors (derived), kept in step.

    idx = Index.open_or_create(path, overrides)   # or Index.open(path) for an existing one
    summary = idx.update(["photos/"])             # only new/changed files reach the model
    hits = idx.search("query.jpg", SearchOptions(k=10), bbox=None)

A thin facade: each stage lives in a module named after it (settings, plan, embed, commit,
derived, search). Opening an index, `info`, `remove` and `count` never import torch; the model
is loaded only when something must be embedded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import images
from .. import vectors as vecs
from .. import whitening as wh
from ..config import EngineConfig, SearchOptions
from ..discover import discover
from ..errors import ArtifactMismatchError, RetrievalError, UsageError
from ..local import LocalFeatures, LocalPCA
from ..store import PathFilter, Store
from ..types import Box, Skipped, shown
from . import derived, settings
from .files import STORE_FILE, index_folder, index_roots, require_writable, writer_lock
from .info import IndexInfo, gather
from .plan import Exclusions, emptied_roots, plan_update
from .search import Query, SearchResult, search, stored_local

if TYPE_CHECKING:
    from ..backbone import Backbone
    from .commit import Embedded
    from .descriptors import Embedding
    from .distributed import Cluster

    # embed(paths, pca): results grouped per forward batch, as the store takes them
    Embed = Callable[[Sequence[str], LocalPCA | None], Iterable[list[Embedded | Skipped]]]

log = logging.getLogger(__name__)

@dataclass
class UpdateSummary:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, "reason; fix: ...") refused in this run
    still_refused: int = 0  # refused before, unchanged since (not tried again without retry_skipped)
    interrupted: bool = False
    hashed: int = 0  # indexed files read to compare with their stored hash (all of them with verify)
    changed: int = 0  # indexed files whose bytes changed (embedded again)
    seconds: float = 0.0
    whitened: bool = False  # a whitening was fitted in this run (not just one in force from before)


class Index:
    """One index folder, opened: its SQLite store (the truth), whitening and FAISS vectors (derived).

    Open it with `Index.open(path)` (an existing index) or `Index.open_or_create(path, settings)`,
    and use it as a context manager, or call `close()`. `update(folders)` indexes new and changed
    files and forgets deleted ones; `search(image, SearchOptions(...))` returns a `SearchResult`;
    `remove(paths)`, `count()` and `info()` need no model. Errors are `retrieval.RetrievalError`s
    (docs/api.md). One writer at a time per folder: `update` and `remove` hold its lock file.
    """

    def __init__(self, path: str | Path, store: Store, config: EngineConfig, *, weights: str | None = None,
                 device: str | None = None) -> None:
        """Use `open` or `open_or_create`. weights / device: this run's choice of where the
        index's weights file now lives and where the model runs (never stored)."""
        self.path = Path(path)
        self.store = store
        self.config = config
        self._weights, self._device = weights, device
        self._backbone: Backbone | None = None
        self._vectors: vecs.VectorIndex | None = None
        self._vectors_for: tuple[int, EngineConfig] | None = None  # (store generation, config) it was checked at
        self._whitening: tuple[int, wh.Whitening | None] | None = None
        self._searcher: vecs.VectorIndex | None = None
        self._faiss_gpu: tuple[int, str] | None = None

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, weights: str | Path | None = None, device: str | None = None) -> Index:
        """An existing index; RetrievalError if there is none."""
        path = index_folder(path)
        db = path / STORE_FILE
        if not db.is_file():
            raise RetrievalError(f"no index at {path}", fix="index a folder of photos into it first, or give the folder "
                                 "that holds one", command=f"retrieve index DIR --index {shlex.quote(str(path))}")
        store = Store(db)
        try:
            config = settings.stored_config(store, path)
        except BaseException:
            store.close()
            raise
        return cls(path, store, config, weights=None if weights is None else str(weights), device=device)

    @classmethod
    def open_or_create(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Index:
        """Open with `overrides` (nested dict of config fields) merged over the stored config.

        A new index takes defaults + overrides, after checking that its model, weights and device
        can be had (so nothing is created for a run that cannot work). An existing one refuses
        overrides that would change its descriptors (model, dtype, size, pooling), naming the fix.
        """
        path = index_folder(path)
        require_writable(path)
        if not (path / STORE_FILE).is_file():
            settings.preflight(overrides or {})
        path.mkdir(parents=True, exist_ok=True)
        store = Store(path / STORE_FILE, create=True)
        try:
            config = settings.configure(store, path, overrides or {})
        except BaseException:
            store.close()
            raise
        return cls(path, store, config)

    def close(self) -> None:
        """Close the store (the `with` block does it). The Index cannot be used afterwards; anything
        `update` or `remove` did is already committed."""
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- backbone ---------------------------------------------------------------------------
    def backbone(self, *, weights: str | None = None, device: str | None = None) -> Backbone:
        """The index's backbone, loaded on first use; its weights must hash to what the index was
        built with. weights / device override those given to `open` (first use only)."""
        if self._backbone is None:
            from ..backbone import load_backbone

            cfg = self.config.backbone
            weights = weights or self._weights
            hashes = self.weights_hashes()
            bb = load_backbone(cfg.name, weights=weights or cfg.weights, device=device or self._device or cfg.device,
                               dtype=cfg.dtype, hash_cache=hashes)
            self._adopt_weights(bb.weights_id, weights, hashes)
            self._backbone = bb
        return self._backbone

    @property
    def device(self) -> str | None:
        """This run's choice of device (`open`'s), or None: the index's setting, else cuda when present."""
        return self._device

    def weights_file(self) -> str | None:
        """Where this run finds the index's weights: `open`'s weights, else the stored path, else
        None (the official checkpoint in the weights cache)."""
        return self._weights or self.config.backbone.weights

    def weights_hashes(self) -> dict[str, str]:
        """Weights-file hashes remembered by (path, size, mtime) (backbone.weights.file_id)."""
        return dict(self.store.get_meta("weights_hashes") or {})

    def checked_weights_id(self) -> str:
        """The weights id of `weights_file()` (hashed, or taken from the remembered hashes), checked
        against the index's exactly as `backbone()` checks it, without building the model: what a
        driver does before its workers load the model themselves (engine/distributed.py)."""
        from ..backbone import weights_id

        hashes = self.weights_hashes()
        wid = weights_id(self.config.backbone.name, weights=self.weights_file(), hash_cache=hashes)
        self._adopt_weights(wid, self._weights, hashes)
        return wid

    def _adopt_weights(self, weights_id: str, weights: str | None, hashes: dict[str, str]) -> None:
        """Record the hashes learned (not in a read-only store: they only save time) and, for a new
        index, its weights id; refuse other weights."""
        if hashes != self.weights_hashes() and not self.store.readonly:
            self.store.set_meta(weights_hashes=dict(list(hashes.items())[-8:]))
        cfg = self.config.backbone
        known = self.store.get_meta("weights_id")
        if known is None:
            self.store.set_meta(weights_id=weights_id, fingerprint=self.fingerprint(weights_id))
        elif known != weights_id:
            raise ArtifactMismatchError(
                f"weights {weights or cfg.weights or 'official ' + cfg.name} ({weights_id[:20]}...) differ "
                f"from those the index at {self.path} was built with ({known[:20]}...)",
                fix="give the original weights file", command="--weights FILE")

    def fingerprint(self, weights_id: str | None = None) -> str:
        return settings.fingerprint(self.config, weights_id or self.store.get_meta("weights_id"))

    # --- embedding --------------------------------------------------------------------------
    def embed_files(self, paths: Sequence[str], *, workers: int | None = None, pca: LocalPCA | None = None,
                    box: Box | None = None) -> Any:
        """engine.descriptors.embed_files with this index's backbone and settings."""
        from .descriptors import embed_files

        return embed_files(paths, backbone=self.backbone(), config=self.config, workers=workers, pca=pca, box=box)

    def embed_queries(self, paths: Sequence[str | Path], *, bbox: Box | None = None) -> list[Embedding]:
        """Query files embedded exactly like the database, each with its first-scale patch tokens
        and model input (a box crops the single query given)."""
        from .descriptors import embed_queries

        if bbox is not None and len(paths) != 1:
            raise UsageError("a box crops one query image", fix="give a single query image with the box")
        return embed_queries([str(p) for p in paths], backbone=self.backbone(), config=self.config, box=bbox)

    def queries(self, paths: Sequence[str | Path], *, bbox: Box | None = None) -> list[Query]:
        """What `search_embedded` takes: see `embed_queries`."""
        return [Query(e.descriptor[None], e.tokens(), e.grid) for e in self.embed_queries(paths, bbox=bbox)]

    def query_tokens(self, path: str | Path, *, bbox: Box | None = None
                     ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """One query: raw descriptor (1, D), first-scale patch tokens (h*w, d), grid (h, w)."""
        q = self.queries([path], bbox=bbox)[0]
        return q.raw, q.patches, q.grid

    def embed_query(self, path: str | Path, *, bbox: Box | None = None) -> np.ndarray:
        """(1, D) raw descriptor of a query file, embedded exactly like the database."""
        return self.queries([path], bbox=bbox)[0].raw

    def local_pca(self) -> LocalPCA | None:
        """The index's patch PCA (None until enough patches were indexed to fit it)."""
        from .commit import stored_pca

        return stored_pca(self.store)

    # --- update -----------------------------------------------------------------------------
    def update(self, roots: Sequence[str | Path], *, retry_skipped: bool = False,
               should_stop: Callable[[], bool] = lambda: False,
               on_progress: Callable[[int, int], None] | None = None, cluster: Cluster | None = None,
               verify: bool = False, on_hashed: Callable[[int, int], None] | None = None) -> UpdateSummary:
        """Bring the index in line with the files under `roots` (see docs/index.md); `verify`
        re-hashes every indexed file (plan.plan_update), `on_hashed(done, total)` follows that. With a
        `cluster` (engine.distributed.Cluster) the files are embedded by Ray workers; planning and
        committing stay here, the same as without (docs/scale.md)."""
        start = time.monotonic()
        summary = UpdateSummary()
        with writer_lock(self.path):
            roots_abs = index_roots(roots)
            # rows stored under a link's own name (before roots were resolved) are replaced by real paths
            under = list(dict.fromkeys([*roots_abs, *map(os.path.abspath, roots)]))
            excluded = self._lift_exclusions(roots_abs)
            unreadable: list[str] = []
            listed = list(discover(roots_abs, extensions=images.IMAGE_EXTENSIONS,
                                   exclude=[self.path, *excluded.paths], unreadable=unreadable))
            found = excluded.keeps(listed)
            keep = PathFilter(unreadable)  # rows under folders we could not list are not "deleted"
            rows = {row.path: row for row in self.store.rows(under=under) if row.path not in keep}
            for root, n in emptied_roots(roots_abs, listed, rows):  # gone is not the same as not mounted
                raise RetrievalError(f"{shown(root)} holds no image files now, but the index has {n} from it (a "
                                     f"drive not mounted?); nothing was changed", fix="mount it, or remove the folder "
                                     "from the index", command=f"retrieve remove {shlex.quote(shown(root))}")
            plan = plan_update(found, rows, retry_skipped=retry_skipped, same_bytes=_same_bytes, verify=verify,
                               on_hashed=on_hashed, should_stop=should_stop)
            if plan.deletes or plan.touches:
                self.store.apply(deletes=plan.deletes, touches=plan.touches)
            summary.removed, summary.unchanged, summary.still_refused = \
                len(plan.deletes), plan.unchanged, plan.still_refused
            summary.hashed, summary.changed, summary.interrupted = plan.hashed, plan.changed, plan.stopped
            if plan.embed and not plan.stopped:
                refs = {r.path: r for r in found}
                if cluster is None:
                    summary.interrupted = self._embed_and_commit(plan.embed, refs, plan.known, summary, should_stop,
                                                                 on_progress, self._embedded)
                else:
                    with cluster.session(self) as embed:
                        summary.interrupted = self._embed_and_commit(plan.embed, refs, plan.known, summary,
                                                                     should_stop, on_progress, embed)
            fitted, w = self._refresh()
            summary.whitened = fitted and w is not None
        summary.seconds = time.monotonic() - start
        return summary

    def _embedded(self, paths: Sequence[str], pca: LocalPCA | None) -> Iterator[list[Embedded | Skipped]]:
        """This process's embedding of `paths`, as the light records the store takes."""
        from .commit import stored

        for group in self.embed_files(paths, pca=pca):
            yield [stored(e) for e in group]

    def _embed_and_commit(self, todo: list[str], refs: dict[str, Any], known: set[str], summary: UpdateSummary,
                          should_stop: Callable[[], bool], on_progress: Callable[[int, int], None] | None,
                          embed: Embed) -> bool:
        """Embed `todo` through `embed(paths, pca)` (groups of results, one per forward batch: this
        process's, or Ray workers') and commit each group in one transaction; True if stopped early.

        The patch PCA of the local descriptors is a derived artefact like the whitening: an index
        without one embeds with patch tokens, in windows of commit.LOCAL_PCA_FILES files doubling
        each time, until commit.PatchSample has fitted it from a bounded sample (refused files
        and what it lets go are committed as they come), then streams the rest with it fixed;
        every local descriptor that reaches the store comes from that one PCA."""
        from .commit import LOCAL_PCA_FILES, Counts, PatchSample, upserts

        counts = Counts()
        sample = PatchSample(self.store)
        done, start, window = 0, 0, LOCAL_PCA_FILES

        def commit(groups: list[list[Embedded | Skipped]]) -> None:
            for rows in groups:  # one transaction each
                if rows:
                    self.store.apply(upserts(rows, refs, known, counts))

        try:
            while start < len(todo):
                part = todo[start:] if sample.pca is not None else todo[start:start + window]
                start, window = start + len(part), 2 * window
                for group in embed(part, sample.pca):
                    commit(sample.take(group))
                    done += len(group)
                    if on_progress is not None:
                        on_progress(done, len(todo))
                    if should_stop():
                        commit(sample.abandon())  # without local descriptors: no PCA was fitted
                        return True
            commit(sample.release())
            return False
        except RetrievalError:  # the embedding failed (a Ray run): what came back is saved, as it says
            with contextlib.suppress(RetrievalError):  # unless the store is what failed (a full disk)
                commit(sample.abandon())
            raise
        finally:
            summary.added, summary.updated = counts.added, counts.updated
            summary.skipped = list(counts.skipped or [])

    # --- derived artefacts ------------------------------------------------------------------
    def whitening(self) -> wh.Whitening | None:
        """The whitening in force, decoded once per store generation (every search asks for it,
        and a ViT-B whitening is megabytes of JSON in the store's meta table)."""
        gen = self.store.generation
        if self._whitening is None or self._whitening[0] != gen:
            self._whitening = (gen, derived.whitening(self.store))
        return self._whitening[1]

    def refresh(self, *, refit: bool = False) -> wh.Whitening | None:
        """Refit whitening if the data changed since it was fitted (or when asked), then make
        sure the FAISS index matches the store's data version; returns the whitening in force."""
        return self._refresh(refit=refit)[1]

    def _refresh(self, *, refit: bool = False) -> tuple[bool, wh.Whitening | None]:
        """`refresh`, and whether it refitted the whitening."""
        done = derived.refit(self.store, self.config, force=refit)
        self.vectors(data=done.data)
        return done.fitted, self.whitening()

    def vectors(self, *, data: tuple[np.ndarray, np.ndarray] | None = None) -> vecs.VectorIndex:
        """The FAISS index for the store's current data version (host memory): loaded, or rebuilt
        and saved. data: the store's (ids, raw descriptors) when the caller has just read them."""
        key = (self.store.generation, self.config)
        if data is None and self._vectors is not None and self._vectors_for == key:
            return self._vectors  # nothing was committed or set since it was checked
        self._vectors = derived.vectors(self.store, self.config, self.path, cached=self._vectors, data=data)
        self._vectors_for = key
        return self._vectors

    def _searcher_for(self, vec: vecs.VectorIndex) -> vecs.VectorIndex:
        """`vec`, searched on the GPU when there is one (exact indexes; IndexConfig.gpu)."""
        if self._searcher is None or self._searcher.faiss_index is not vec.faiss_index:
            device = self._device or self.config.backbone.device
            where = device if device is not None and device.startswith("cuda") else "cuda"
            self._searcher = vecs.place(vec, use_gpu=self.config.index.gpu, device=where, faiss_gpus=self._faiss_gpus)
        return self._searcher

    def _faiss_gpus(self) -> tuple[int, str]:
        """How many GPUs FAISS's GPU code may use here, and why none: asked once per Index, in a
        child process (retrieval/faiss_gpu.py), and only when an IVF index meets a CUDA device."""
        if self._faiss_gpu is None:
            from .. import faiss_gpu

            p = faiss_gpu.probe()
            self._faiss_gpu = (p.gpus, p.reason)
        return self._faiss_gpu

    # --- query ------------------------------------------------------------------------------
    def search(self, path: str | Path, options: SearchOptions = SearchOptions(), *,
               bbox: Box | None = None) -> SearchResult:
        """Top options.k by global similarity; optionally alpha-query-expanded (options.qe = how many
        top results to add) and re-ranked by geometrically verified patch matches over the top
        options.rerank_k.

        Results whose file is gone from disk (deleted or moved since indexing) are left out and
        listed in `SearchResult.gone`; the next ones fill their places."""
        return self.search_many([path], options, bbox=bbox)[0]

    def search_many(self, paths: Sequence[str | Path], options: SearchOptions = SearchOptions(), *,
                    bbox: Box | None = None) -> list[SearchResult]:
        """`search` for several query files, embedded together in batched forward passes (a box
        applies to a single query only). Raises BadImageError for the first unusable query."""
        if self.store.count("ok") == 0:
            raise RetrievalError(f"the index at {self.path} holds no images", fix="index a folder of photos into it "
                                 "first", command=f"retrieve index DIR --index {shlex.quote(str(self.path))}")
        return [self.search_embedded(q, options) for q in self.queries(paths, bbox=bbox)]

    def search_embedded(self, q: Query, options: SearchOptions = SearchOptions()) -> SearchResult:
        """`search` for a query already embedded by `queries`."""
        return search(q, store=self.store, vec=self._searcher_for(self.vectors()), whitening=self.whitening(),
                      candidates=self._candidate_local, options=options)

    def _candidate_local(self, ids: Sequence[int], pca: LocalPCA) -> dict[int, LocalFeatures]:
        """Stored local descriptors of the candidates; recomputed from the files where missing."""
        from .descriptors import Embedding

        out, missing = stored_local(self.store, ids, pca)
        if missing:
            paths = self.store.paths(missing)
            by_path = {p: i for i, p in paths.items()}
            for group in self.embed_files([paths[i] for i in missing], workers=0, pca=pca):
                for item in group:
                    if isinstance(item, Embedding) and item.features is not None:
                        out[by_path[item.decoded.path]] = item.features
        return out

    # --- maintenance ------------------------------------------------------------------------
    def remove(self, paths: Sequence[str | Path]) -> int:
        """Forget files (or everything under folders) and keep them out of later updates of their
        folders (see `exclusions`); returns how many rows went. Paths that match no row are not
        excluded."""
        with writer_lock(self.path):
            # a path through a link names the rows stored under its real path (and any under its own)
            targets = list(dict.fromkeys(t for p in paths for t in (os.path.realpath(p), os.path.abspath(p))))
            rows = list(self.store.rows(under=targets))
            if rows:
                hit = [t for t in targets if any(r.path in PathFilter([t]) for r in rows)]
                self.store.set_meta(exclude=self.exclusions().with_paths(hit).to_meta())
                self.store.apply(deletes=[r.id for r in rows])
            self.refresh()
            return len(rows)

    def exclusions(self) -> Exclusions:
        """What `update` leaves out of the folders it scans (plan.Exclusions)."""
        return Exclusions.from_meta(self.store.get_meta("exclude"))

    def exclude(self, globs: Sequence[str] = (), *, clear: bool = False) -> Exclusions:
        """Add glob patterns to the exclusions (clear=True first drops every exclusion)."""
        current = self.exclusions()
        new = (Exclusions() if clear else current).with_globs(globs)
        if new != current:
            self.store.set_meta(exclude=new.to_meta())
        return new

    def _lift_exclusions(self, roots: Sequence[str]) -> Exclusions:
        current = self.exclusions()
        kept = current.lifted_by(roots)
        if kept != current:
            lifted = sorted(set(current.paths) - set(kept.paths))
            log.info("indexing again what `retrieve remove` had excluded: %s", ", ".join(map(shown, lifted)))
            self.store.set_meta(exclude=kept.to_meta())
        return kept

    def count(self) -> int:
        """How many images are indexed (refused files not counted)."""
        return self.store.count("ok")

    def info(self) -> IndexInfo:
        """The index's state: counts, refused and excluded files, settings, derived artefacts, files
        on disk (engine/info.py; `.to_dict()` is what `retrieve info --json` prints). No model."""
        return gather(self.path, self.store, self.config, whitening=self.whitening(), exclusions=self.exclusions(),
                      fingerprint=self.fingerprint())


def _same_bytes(path: str, sha256: str) -> bool:
    """Whether the file at `path` hashes to `sha256` (a touched file: new timestamp, same bytes)."""
    from ..backbone.weights import file_sha256

    try:
        return file_sha256(path) == sha256
    except OSError:  # unreadable now: embedding it again records the reader's refusal and its fix
        return False


__all__ = ["Index", "UpdateSummary"]

"""An index folder: SQLite store (truth) + whitening + FAISS vectors (derived), kept in step.

    idx = Index.open_or_create(path, overrides)   # or Index.open(path) for an existing one
    summary = idx.update(["photos/"])             # only new/changed files reach the model
    hits = idx.search("query.jpg", SearchOptions(k=10), bbox=None)

A thin facade: each stage lives in a module named after it (settings; update: plan, embed,
commit; weights_identity; derived and derived_cache; search and reranking), and `Index` only
wires them to its store, settings and model (docs/decisions.md, "Engine layout"). Opening an
index, `info`, `remove` and `count` never import torch; the model is loaded only when something
must be embedded.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import vectors as vecs
from .. import whitening as wh
from ..config import EngineConfig, SearchOptions
from ..errors import RetrievalError, UsageError
from ..local import LocalFeatures, LocalPCA
from ..store import FileRow, Store
from ..types import Box, box_fits, shown
from . import settings
from .derived_cache import DerivedCache
from .files import STORE_FILE, Roots, index_folder, require_writable
from .info import IndexInfo, gather
from .plan import Exclusions
from .reranking import Reranking, made_local
from .search import Query, SearchResult, search
from .update import UpdateOptions, UpdateSummary, remove, update
from .weights_identity import IndexModel

if TYPE_CHECKING:
    from ..backbone import Backbone
    from .distributed import Cluster

log = logging.getLogger(__name__)


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
        self._model = IndexModel(store, config, self.path, weights=weights, device=device)
        self._derived = DerivedCache(store, self.path, device=device)

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, weights: str | Path | None = None, device: str | None = None) -> Index:
        """An existing index; RetrievalError if there is none."""
        path = index_folder(path, create=False)
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

    # --- model -----------------------------------------------------------------------------
    def backbone(self) -> Backbone:
        """The index's backbone, loaded on first use; its weights must hash to what the index was
        built with (engine/weights_identity.py)."""
        return self._model.backbone()

    @property
    def device(self) -> str | None:
        """This run's choice of device (`open`'s), or None: the index's setting, else cuda when present."""
        return self._model.device

    def fingerprint(self, weights_id: str | None = None) -> str:
        return settings.fingerprint(self.config, weights_id or self.store.get_meta("weights_id"))

    # --- queries ---------------------------------------------------------------------------
    def queries(self, paths: Sequence[str | Path], *, bbox: Box | None = None) -> list[Query]:
        """Query files embedded exactly like the database, together in batched forward passes, each
        with its first-scale patch tokens (a box crops the single query given): what `search`,
        `search_many`, `search_embedded` and eval search with. BadImageError for the first
        unusable query. (Uploads' bytes: engine.serving.embed_explained.)"""
        from .embedding import embed_queries

        if bbox is not None and len(paths) != 1:
            raise UsageError("a box crops one query image", fix="give a single query image with the box")
        embedded = embed_queries([str(p) for p in paths], backbone=self.backbone(), config=self.config, box=bbox)
        return [Query.of(e) for e in embedded]

    def local_pca(self) -> LocalPCA | None:
        """The index's patch PCA (None until enough patches were indexed to fit it)."""
        from .commit import stored_pca

        return stored_pca(self.store)

    # --- update ----------------------------------------------------------------------------
    def update(self, roots: Sequence[str | Path] | Roots, *, retry_skipped: bool = False,
               should_stop: Callable[[], bool] = lambda: False,
               on_progress: Callable[[int, int], None] | None = None, cluster: Cluster | None = None,
               verify: bool = False, on_hashed: Callable[[int, int], None] | None = None,
               refit: bool = False, prune: bool = False) -> UpdateSummary:
        """Bring the index in line with the files under `roots` (engine/update.py, docs/index.md);
        `verify` re-hashes every indexed file, `on_hashed(done, total)` follows that; `refit`
        refits the whitening even when nothing changed; `prune`: files gone are gone for good, even
        when a root holds no image now or no longer exists (otherwise refused: a drive not mounted?).
        With a `cluster` (engine.distributed.Cluster) the files are embedded by Ray workers (docs/scale.md)."""
        options = UpdateOptions(retry_skipped=retry_skipped, verify=verify, refit=refit, cluster=cluster,
                                should_stop=should_stop, on_progress=on_progress, on_hashed=on_hashed, prune=prune)
        return update(self.store, self.config, self.path, roots, model=self._model, derived=self._derived,
                      options=options)

    # --- derived artefacts ------------------------------------------------------------------
    def whitening(self) -> wh.Whitening | None:
        """The whitening in force (engine/derived_cache.py)."""
        return self._derived.whitening()

    def refresh(self, *, refit: bool = False) -> wh.Whitening | None:
        """Refit whitening if the data changed since it was fitted (or when asked), then make
        sure the FAISS index matches the store's data version; returns the whitening in force."""
        return self._derived.refresh(self.config, refit=refit)[1]

    def ensure_vectors(self) -> vecs.VectorIndex:
        """The FAISS index for the store's current data version (host memory): loaded, or rebuilt
        and saved."""
        return self._derived.ensure_vectors(self.config)

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
        self.require_images()
        queries = self.queries(paths, bbox=bbox)
        if bbox is not None and queries[0].original_wh is not None:
            _say_cut(paths[0], bbox, queries[0].original_wh)
        return [self.search_embedded(q, options) for q in queries]

    def search_embedded(self, q: Query, options: SearchOptions = SearchOptions()) -> SearchResult:
        """`search` for a query already embedded (by `queries`, or serve's embed_explained): the
        search stage (engine/search.py) over this index's vectors, re-ranking through the
        re-ranking stage (engine/reranking.py) with this index's model for candidates stored
        without local descriptors."""
        return self._search(q, options)

    def _search(self, q: Query, options: SearchOptions, *, placed: bool = True) -> SearchResult:
        """search_embedded; placed=False: on the host's vectors unless a search placed them on a GPU
        already or the index asks for one (DerivedCache.searcher)."""
        return search(q, store=self.store, vec=self._derived.searcher(self.config, placed=placed),
                      whitening=self.whitening(), options=options, rerank=Reranking(self.store, self._local_of))

    def similar(self, ref: str | int, options: SearchOptions = SearchOptions()) -> SearchResult:
        """More like an indexed file (a path, or an id: N or `id:N`), searched with the descriptor the
        store holds for it: no decode, no model; re-ranked with its stored local descriptors (read
        from its file only where the row has none). The file is left out of its own results; copies
        of it under other names are not. Searched on the host's vectors unless a search here placed
        them on a GPU already or the index asks for one (DerivedCache.searcher, placed=False)."""
        from .lookup import like_query, resolve

        row = resolve(self.store, ref, index=self.path)
        q = like_query(self.store, row, rerank=options.rerank)
        if options.rerank and q.features is None:  # a row stored without local descriptors: its file is read
            tokens = self.queries([row.path])[0]
            q = dataclasses.replace(q, patches=tokens.patches, grid=tokens.grid)
        return self._search(q, options, placed=False)

    def files(self, paths: Sequence[str | Path] | None = None, *, skipped: bool = False) -> Iterator[FileRow]:
        """Indexed files (skipped: refused ones) by path, at or under `paths` or all, streamed
        (engine/lookup.listing)."""
        from .lookup import listing

        return listing(self.store, paths, skipped=skipped)

    def _local_of(self, paths: Sequence[str], pca: LocalPCA) -> dict[str, LocalFeatures]:
        """Re-ranking's local descriptors of candidates stored without them (reranking.LocalOf)."""
        return made_local(paths, pca, backbone=self.backbone(), config=self.config)

    # --- maintenance ------------------------------------------------------------------------
    def remove(self, paths: Sequence[str | Path]) -> int:
        """Forget files (or everything under folders) and keep them out of later updates of their
        folders (see `exclusions`); returns how many rows went (engine/update.py)."""
        return remove(self.store, self.config, self.path, paths, derived=self._derived)

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

    def require_images(self) -> None:
        """RetrievalError naming the fix when the index holds no images (nothing to search or compare)."""
        if self.store.count("ok") == 0:
            raise RetrievalError(f"the index at {self.path} holds no images", fix="index a folder of photos into it "
                                 "first", command=f"retrieve index DIR --index {shlex.quote(str(self.path))}")

    def count(self) -> int:
        """How many images are indexed (refused files not counted)."""
        return self.store.count("ok")

    def info(self) -> IndexInfo:
        """The index's state: counts, refused and excluded files, settings, derived artefacts, files
        on disk (engine/info.py; `.to_dict()` is what `retrieve info --json` prints). No model."""
        return gather(self.path, self.store, self.config, whitening=self.whitening(), exclusions=self.exclusions(),
                      fingerprint=self.fingerprint())



def _say_cut(path: str | Path, box: Box, size: tuple[int, int]) -> None:
    """A warning when a query's box reaches past its picture of `size` (w, h): the search used the
    part inside it (images.crop_pixels)."""
    if not box_fits(box, size):
        from ..images import crop_pixels

        log.warning("--bbox %s reaches past the %dx%d image %s; the query is the part inside it, %s",
                    ",".join(f"{v:g}" for v in box), *size, shown(str(path)), ",".join(map(str, crop_pixels(box, size))))


__all__ = ["Index", "UpdateSummary"]

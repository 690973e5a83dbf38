"""Bringing an index in line with its folders: discover -> plan -> embed -> commit -> derive.

    summary = update(store, config, folder, roots, model=model, derived=cache)
    n = remove(store, config, folder, paths, derived=cache)   # forget files, keep them out

One run, under the index folder's writer lock: the folders are listed (the exclusions lifted
for folders given again), `plan.plan_update` compares what is found with the stored rows (the
call site below, `_plan`, moves included), deletions, touches and moves are applied in one
transaction, the files to embed go through this process's model or a Ray cluster
(engine/distributed.py) and are committed per forward batch (engine/commit.py, the patch-PCA sample included), and the whitening and vectors are
refreshed (engine/derived_cache.py), refitted once when asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .. import images
from ..config import EngineConfig
from ..discover import discover
from ..errors import RetrievalError
from ..local import LocalPCA
from ..store import PathFilter, Store
from ..types import ImageRef, Skipped, shown
from .commit import LOCAL_PCA_FILES, Counts, Embed, StoredEmbedding, PatchSample, stored, upserts
from .derived_cache import DerivedCache
from .files import Roots, index_roots, stored_names, writer_lock
from .plan import Exclusions, Plan, emptied_roots, plan_update
from .weights_identity import IndexModel

if TYPE_CHECKING:
    from .distributed import Cluster

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class UpdateSummary:
    added: int = 0
    updated: int = 0
    removed: int = 0
    moved: int = 0  # indexed files found at a new path (same bytes): the row follows, nothing is embedded
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, "reason; fix: ...") refused in this run
    still_refused: int = 0  # refused before, unchanged since (not tried again without retry_skipped)
    interrupted: bool = False
    hashed: int = 0  # indexed files read to compare with their stored hash (all of them with verify)
    changed: int = 0  # indexed files whose bytes changed (embedded again)
    seconds: float = 0.0
    whitened: bool = False  # a whitening was fitted in this run (not just one in force from before)


@dataclass(frozen=True)
class UpdateOptions:
    """How one update runs (Index.update's keywords): see docs/index.md."""

    retry_skipped: bool = False
    verify: bool = False  # re-hash every indexed file (plan.plan_update)
    refit: bool = False  # refit the whitening even when nothing changed (--refit-whitening)
    cluster: Cluster | None = None  # embed on Ray workers (docs/scale.md)
    should_stop: Callable[[], bool] = lambda: False
    on_progress: Progress | None = None  # files embedded
    on_hashed: Progress | None = None  # files hashed to compare with their stored hash
    prune: bool = False  # files gone are gone, even under a root emptied or deleted (--prune)


def update(store: Store, config: EngineConfig, folder: Path, roots: Sequence[str | Path] | Roots, *,
           model: IndexModel, derived: DerivedCache, options: UpdateOptions = UpdateOptions()) -> UpdateSummary:
    """Bring the index in `folder` in line with the files under `roots` (see the module docstring)."""
    start = time.monotonic()
    summary = UpdateSummary()
    with writer_lock(folder):
        roots = index_roots(roots, missing_ok=options.prune)
        found, plan = _plan(store, folder, roots, options)
        if plan.deletes or plan.touches or plan.moves:
            store.apply(deletes=plan.deletes, touches=plan.touches, moves=plan.moves)
        summary.removed, summary.unchanged, summary.still_refused, summary.moved = \
            len(plan.deletes), plan.unchanged, plan.still_refused, len(plan.moves)
        summary.hashed, summary.changed, summary.interrupted = plan.hashed, plan.changed, plan.stopped
        if plan.embed and not plan.stopped:
            refs = {r.path: r for r in found}
            with _embedding(model, options.cluster) as embed:
                summary.interrupted = embed_and_commit(store, plan.embed, refs, plan.known, summary, embed=embed,
                                                       should_stop=options.should_stop,
                                                       on_progress=options.on_progress)
        fitted, w = derived.refresh(config, refit=options.refit)
        summary.whitened = fitted and w is not None
    summary.seconds = time.monotonic() - start
    return summary


def _plan(store: Store, folder: Path, roots: Roots, options: UpdateOptions) -> tuple[list[ImageRef], Plan]:
    """The files found under `roots` (less the exclusions) and what to do with each."""
    excluded = _lift_exclusions(store, roots.real)
    unreadable: list[str] = []
    listed = list(discover(roots.real, extensions=images.IMAGE_EXTENSIONS, exclude=[folder, *excluded.paths],
                           unreadable=unreadable))
    found = excluded.keeps(listed)
    keep, inside = PathFilter(unreadable), PathFilter(roots.under)  # rows under folders not listed: not "deleted"
    stored = [row for row in store.rows() if row.path not in keep]
    rows = {row.path: row for row in stored if row.path in inside}
    for root, n in [] if options.prune else emptied_roots(roots.real, listed, rows):  # gone is not not mounted
        raise RetrievalError(f"{shown(root)} holds no image files now, but the index has {n} from it (a "
                             f"drive not mounted?); nothing was changed", fix="mount it, or if they are gone for "
                             "good prune them", command=f"retrieve index {shlex.quote(shown(root))} --prune")
    plan = plan_update(found, rows, retry_skipped=options.retry_skipped, sha256_of=_sha256_of,
                       verify=options.verify, on_hashed=options.on_hashed, should_stop=options.should_stop,
                       gone=_gone, elsewhere=(row for row in stored if row.path not in inside))
    return found, plan


def _lift_exclusions(store: Store, roots: Sequence[str]) -> Exclusions:
    """The exclusions, less those of folders given again (which are indexed again)."""
    current = Exclusions.from_meta(store.get_meta("exclude"))
    kept = current.lifted_by(roots)
    if kept != current:
        lifted = sorted(set(current.paths) - set(kept.paths))
        log.info("indexing again what `retrieve remove` had excluded: %s", ", ".join(map(shown, lifted)))
        store.set_meta(exclude=kept.to_meta())
    return kept


def _embedding(model: IndexModel, cluster: Cluster | None) -> AbstractContextManager[Embed]:
    """Where the files are embedded: this process's model, or a Ray cluster's workers (which load
    the model themselves, after this process has checked its weights)."""
    if cluster is None:
        return nullcontext(partial(embedded_here, model))
    return cluster.session(model.config, model.checked(), device=model.device)


def embedded_here(model: IndexModel, paths: Sequence[str], pca: LocalPCA | None) -> Iterator[list[StoredEmbedding | Skipped]]:
    """This process's embedding of `paths`, as the light records the store takes."""
    from .embedding import embed_files

    for group in embed_files(paths, backbone=model.backbone(), config=model.config, pca=pca):
        yield [stored(e) for e in group]


def embed_and_commit(store: Store, todo: list[str], refs: dict[str, ImageRef], known: set[str],
                     summary: UpdateSummary, *, embed: Embed, should_stop: Callable[[], bool],
                     on_progress: Progress | None) -> bool:
    """Embed `todo` through `embed(paths, pca)` (groups of results, one per forward batch: this
    process's, or Ray workers') and commit each group in one transaction; True if stopped early.

    The patch PCA of the local descriptors is a derived artefact like the whitening: an index
    without one embeds with patch tokens, in windows of commit.LOCAL_PCA_FILES files doubling
    each time, until commit.PatchSample has fitted it from a bounded sample (refused files
    and what it lets go are committed as they come), then streams the rest with it fixed;
    every local descriptor that reaches the store comes from that one PCA."""
    counts = Counts()
    sample = PatchSample(store)
    done, start, window = 0, 0, LOCAL_PCA_FILES

    def commit(groups: list[list[StoredEmbedding | Skipped]]) -> None:
        for rows in groups:  # one transaction each
            if rows:
                store.apply(upserts(rows, refs, known, counts))

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


def remove(store: Store, config: EngineConfig, folder: Path, paths: Sequence[str | Path], *,
           derived: DerivedCache) -> int:
    """Forget files (or everything under folders) and keep them out of later updates of their
    folders (plan.Exclusions); returns how many rows went. Paths that match no row are not
    excluded."""
    with writer_lock(folder):
        # a path through a link names the rows stored under its real path (and any under its own)
        targets = stored_names(paths)
        rows = list(store.rows(under=targets))
        if rows:
            hit = [t for t, f in ((t, PathFilter([t])) for t in targets) if any(r.path in f for r in rows)]
            store.set_meta(exclude=Exclusions.from_meta(store.get_meta("exclude")).with_paths(hit).to_meta())
            store.apply(deletes=[r.id for r in rows])
        derived.refresh(config)
        return len(rows)


def _sha256_of(path: str) -> str | None:
    """The file's sha256 as the store holds it; None when it cannot be read now (embedding it
    records the reader's refusal and its fix)."""
    from ..backbone.weights import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def _gone(path: str) -> bool:
    """Whether nothing is at `path` now (a folder that cannot be searched is not "gone")."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


__all__ = ["UpdateOptions", "UpdateSummary", "embed_and_commit", "embedded_here", "remove", "update"]

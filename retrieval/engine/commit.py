"""Turning embedding results into store rows, per forward batch; the index's patch PCA.

The single-process path and the Ray path (engine/distributed.py) both commit through here:
results become `StoredEmbedding` records, and `upserts` turns a group of them into one transaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import local
from ..local import LocalPCA
from ..store import Store, Upsert
from ..types import ImageRef, Skipped
from .derived import read_meta

if TYPE_CHECKING:
    from .embedding import Embedding

LOCAL_PCA_FILES = 16  # a new index learns its patch PCA from the tokens of the first images it embeds
LOCAL_PCA_SAMPLE = 50_000  # at most this many of their patch tokens


@dataclass
class Counts:
    added: int = 0
    updated: int = 0
    skipped: list[tuple[str, str]] | None = None

    def __post_init__(self) -> None:
        self.skipped = self.skipped if self.skipped is not None else []


@dataclass(frozen=True)
class StoredEmbedding:
    """What the store keeps of one embedded file, in plain numpy and bytes: the light record that
    crosses processes (engine/distributed.py) and that `upserts` turns into a row.

    descriptor: raw global descriptor (D,) float32; grid: the first scale's (h, w); local_feats /
    local_coords: local.pack's blobs, or None before the index has its patch PCA, when `patches`
    (h*w, d) float32 holds the first scale's tokens instead (the sample the PCA is learned from)."""

    path: str
    sha256: str
    width: int
    height: int
    descriptor: np.ndarray
    grid: tuple[int, int]
    local_feats: bytes | None = None
    local_coords: bytes | None = None
    patches: np.ndarray | None = None


# embed(paths, pca): the results grouped per forward batch, as the store takes them (this
# process's embedding, engine/update.py, or Ray workers', engine/distributed.py)
Embed = Callable[[Sequence[str], LocalPCA | None], Iterable[list[StoredEmbedding | Skipped]]]


def stored(item: Embedding | Skipped) -> StoredEmbedding | Skipped:
    """The light record of one embedding result (a refused file passes through)."""
    if isinstance(item, Skipped):
        return item
    d = item.decoded
    feats, coords = local.pack(item.features) if item.features is not None else (None, None)
    return StoredEmbedding(d.path, d.sha256, d.original_wh[0], d.original_wh[1], item.descriptor, item.grid, feats,
                           coords, item.patches)


def featured(item: StoredEmbedding | Skipped, pca: LocalPCA | None) -> StoredEmbedding | Skipped:
    """A result embedded with its patch tokens, given its local descriptors by `pca` (the tokens
    dropped); anything else unchanged."""
    if pca is None or isinstance(item, Skipped) or item.patches is None:
        return item
    feats, coords = local.pack(local.select(item.patches, item.grid, pca))
    return dataclasses.replace(item, local_feats=feats, local_coords=coords, patches=None)


def upserts(group: Sequence[StoredEmbedding | Skipped], refs: dict[str, ImageRef], known: set[str],
            counts: Counts) -> list[Upsert]:
    """Store rows for one group of results, counting added / updated / skipped into `counts`.
    Results without local descriptors (an index too small to learn its patch PCA yet) get none:
    they are recomputed from the files when a re-ranking needs them."""
    out = []
    for item in group:
        if isinstance(item, Skipped):
            ref = refs[item.path]
            assert counts.skipped is not None
            said = item.reason if item.fix is None else f"{item.reason}; fix: {item.fix}"  # the store keeps the reason
            counts.skipped.append((item.path, said))
            out.append(Upsert(item.path, ref.nbytes, ref.mtime_ns, None, "skipped", item.reason,
                              ctime_ns=ref.ctime_ns, inode=ref.inode))
            continue
        ref = refs[item.path]
        out.append(Upsert(item.path, ref.nbytes, ref.mtime_ns, item.sha256, "ok", width=item.width, height=item.height,
                          descriptor=item.descriptor, local_feats=item.local_feats, local_coords=item.local_coords,
                          grid=item.grid, ctime_ns=ref.ctime_ns, inode=ref.inode))
        if item.path in known:
            counts.updated += 1
        else:
            counts.added += 1
    return out


LOCAL_PCA = "local_pca"  # the store's meta entry of the patch PCA (local.encode_pca / decode_pca)


def stored_pca(store: Store, *, dim_in: int | None = None) -> LocalPCA | None:
    """The index's patch PCA, decoded and checked by local.decode_pca (None: not fitted yet)."""
    return read_meta(store, LOCAL_PCA, lambda text: local.decode_pca(text, dim_in=dim_in),
                     "restore a backup (`retrieve backup`) or index the folders again into a new --index")


def fit_local_pca(store: Store, sample: Sequence[np.ndarray]) -> LocalPCA | None:
    """The index's patch PCA: the stored one, or fitted (once, then frozen and stored) on the
    `sample` patch sets when they hold at least local.MIN_FIT_PATCHES tokens; else None."""
    pca = stored_pca(store)
    if pca is not None or not sample:
        return pca
    allp = np.concatenate(list(sample))
    if len(allp) < local.MIN_FIT_PATCHES:
        return None
    if len(allp) > LOCAL_PCA_SAMPLE:
        allp = allp[np.random.default_rng(0).choice(len(allp), LOCAL_PCA_SAMPLE, replace=False)]
    pca = local.fit_pca(allp, dim=local.DEFAULT_DIM)
    store.set_meta(**{LOCAL_PCA: local.encode_pca(pca)})
    return pca


class PatchSample:
    """A new index's patch-PCA sample, bounded (docs/decisions.md): results embedded with their
    patch tokens wait here, in their forward batches, until the PCA is fitted from the tokens of
    LOCAL_PCA_FILES images, then leave with their local descriptors; the rest of a batch (refused
    files, results that already have local descriptors) leaves at once. So a run commits from its
    first batches and holds at most LOCAL_PCA_FILES images plus one forward batch, whatever comes
    first (refused files, tiny images). When those images hold too few tokens to fit the PCA (tiny
    images), they leave without local descriptors and only their tokens stay (fewer than
    local.MIN_FIT_PATCHES), joined by each later batch's until the PCA can be fitted.

        sample = PatchSample(store)    # pca: the stored one, else None until fitted
        now = sample.take(group)       # per forward batch: the batches to commit now
        rest = sample.release()        # at the end of a run: fitted on what there is, if it can be
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pca = stored_pca(store)
        self.held: list[list[StoredEmbedding]] = []  # waiting for the PCA, with their tokens, per forward batch
        self.tokens: list[np.ndarray] = []  # (h*w, d) float32 each: the held ones' (and tiny ones' let go before)
        self.images = 0  # how many images' tokens were sampled

    def take(self, group: Sequence[StoredEmbedding | Skipped]) -> list[list[StoredEmbedding | Skipped]]:
        """What of one forward batch's results to commit now, as batches (the rest is held)."""
        if self.pca is not None:
            return [[featured(e, self.pca) for e in group]]
        new = [e for e in group if isinstance(e, StoredEmbedding) and e.patches is not None]
        now: list[StoredEmbedding | Skipped] = [e for e in group if not (isinstance(e, StoredEmbedding) and e.patches is not None)]
        if new:
            self.held.append(new)
            self.tokens += [e.patches for e in new if e.patches is not None]
            self.images += len(new)
        return [now] + (self.release() if self.images >= LOCAL_PCA_FILES else [])

    def release(self) -> list[list[StoredEmbedding | Skipped]]:
        """The held batches, with local descriptors when the sample's tokens fit the PCA (fitted
        here, once, and stored), else without them (their tokens kept for the next try)."""
        self.pca = fit_local_pca(self.store, self.tokens)
        if self.pca is not None:
            self.tokens = []
        return self.abandon()

    def abandon(self) -> list[list[StoredEmbedding | Skipped]]:
        """The held batches as they are (with local descriptors when the PCA is known): what a run
        that stops early commits."""
        held, self.held = self.held, []
        return [[featured(e, self.pca) for e in g] for g in held]


def query_pca(store: Store, patches: np.ndarray) -> LocalPCA:
    """The index's patch PCA, or for an index without one a throw-away PCA of the query's own
    patches (the identity when there are too few to fit)."""
    pca = stored_pca(store, dim_in=patches.shape[1])
    if pca is not None:
        return pca
    if len(patches) < 2:
        return local.identity(patches.shape[1])
    return local.fit_pca(patches, dim=local.DEFAULT_DIM)

"""Compact local (patch) descriptors for re-ranking: PCA-reduced, fp16, at most N per image.

Budget: N = 224 patches x 64 dims x 2 bytes = 28 KB, plus 4 bytes of grid coordinates per
patch (two uint16), about 29 KB per image (ViT-S at 448 px has 32 x 24 = 768 patches; ViT-B/L/g the same
grid). Patches are chosen by *distinctiveness*, their distance from the mean patch after
projection: uniform regions (sky, walls, backgrounds) sit near the mean and match everything,
so they are the first to go. More patches or dimensions help small objects and cost linearly
in storage and matching time.

What an index stores, each with one writer and one reader here, used by the engine and by
`retrieve check` alike: the patch PCA (`encode_pca` / `decode_pca`, a text meta entry) and each
row's local descriptors (`pack` / `unpack`, two blobs whose sizes `blobs_fit` checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import affine_from_text, l2n, npz_text, principal_axes
from .errors import ArtifactMismatchError

DEFAULT_PATCHES = 224
DEFAULT_DIM = 64


@dataclass(frozen=True)
class LocalPCA:
    """Projection of patch tokens: y = L2((x - mean) @ components). components: (d, k)."""

    mean: np.ndarray
    components: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    def project(self, patches: np.ndarray) -> np.ndarray:
        """(t, d) -> (t, k) float32, rows L2-normalised."""
        y = (np.asarray(patches, np.float32) - self.mean) @ self.components
        return l2n(y)


def encode_pca(pca: LocalPCA) -> str:
    """The patch PCA as an index stores it: its npz as base64 text."""
    return npz_text(mean=pca.mean, components=pca.components)


def decode_pca(text: Any, *, dim_in: int | None = None) -> LocalPCA:
    """`encode_pca`'s text, checked: readable, finite, mean (d,) and components (d, k) with k >= 1,
    and (when given) taking `dim_in`-d tokens. ArtifactMismatchError saying what is wrong otherwise
    (a phrase: "the patch PCA ...")."""
    a = affine_from_text(text, matrix="components", what="the patch PCA")
    pca = LocalPCA(a["mean"], a["components"])
    d = pca.components.shape[0]
    if dim_in is not None and d != dim_in:
        raise ArtifactMismatchError(f"the patch PCA takes {d}-d tokens but the model makes {dim_in}-d ones")
    return pca


MIN_FIT_PATCHES = 4 * DEFAULT_DIM  # fit the index's PCA only once this many patch tokens are in hand


def identity(d: int, dim: int = DEFAULT_DIM) -> LocalPCA:
    """No learned projection: the first min(dim, d) token coordinates (for samples too small to fit)."""
    return LocalPCA(np.zeros(d, np.float32), np.eye(d, min(dim, d), dtype=np.float32))


def fit_pca(patches: np.ndarray, dim: int = DEFAULT_DIM) -> LocalPCA:
    """PCA of patch tokens (t, d); keeps min(dim, d, t - 1) components, signs fixed."""
    t, d = np.shape(patches)
    if t < 2:
        raise ValueError("need at least 2 patches to fit a PCA")
    mean, comps, _ = principal_axes(patches, max(1, min(dim, d, t - 1)))
    return LocalPCA(mean.astype(np.float32), comps.astype(np.float32))


@dataclass(frozen=True)
class LocalFeatures:
    """feats: (m, k) float16 unit rows; xy: (m, 2) patch centres in grid units (col + .5, row + .5)."""

    feats: np.ndarray
    xy: np.ndarray
    grid: tuple[int, int]


def grid_xy(grid: tuple[int, int]) -> np.ndarray:
    """Centres of all patches of an (h, w) grid, row-major: (h*w, 2) as (x, y)."""
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    return np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float32)


def select(patches: np.ndarray, grid: tuple[int, int], pca: LocalPCA, n: int = DEFAULT_PATCHES) -> LocalFeatures:
    """Project all patches, keep the n most distinctive (largest distance from the PCA mean)."""
    h, w = grid
    if patches.shape[0] != h * w:
        raise ValueError(f"{patches.shape[0]} patches do not fill a {h}x{w} grid")
    centred = (np.asarray(patches, np.float32) - pca.mean) @ pca.components
    score = np.linalg.norm(centred, axis=1)
    keep = np.sort(np.argsort(-score, kind="stable")[:n])
    feats = l2n(centred[keep])
    return LocalFeatures(feats.astype(np.float16), grid_xy(grid)[keep], grid)


def select_many(patches: Any, grid: tuple[int, int], pca: LocalPCA, n: int = DEFAULT_PATCHES) -> list[LocalFeatures]:
    """`select` for a batch of token sets, torch (b, h*w, d), computed where the tensor lives (the
    GPU when indexing there): only the kept features reach the host, 224 x 64 fp16 per image,
    instead of every token (1369 x 768 fp32 = 4.2 MB for ViT-B at 518 px). Same selection as
    `select` (a stable descending sort), up to float rounding of near-equal scores."""
    import torch

    h, w = grid
    if patches.ndim != 3 or patches.shape[1] != h * w:
        raise ValueError(f"patches of shape {tuple(patches.shape)} do not fill a {h}x{w} grid")
    mean = torch.from_numpy(pca.mean).to(patches.device)
    components = torch.from_numpy(pca.components).to(patches.device)
    centred = (patches.float() - mean) @ components
    order = torch.sort(centred.norm(dim=2), dim=1, descending=True, stable=True).indices[:, :n]
    keep = order.sort(dim=1).values
    kept = torch.gather(centred, 1, keep[..., None].expand(-1, -1, centred.shape[2]))
    feats = (kept / kept.norm(dim=2, keepdim=True).clamp_min(1e-12)).half().cpu().numpy()
    keep_np, xy = keep.cpu().numpy(), grid_xy(grid)
    return [LocalFeatures(feats[i], xy[keep_np[i]], grid) for i in range(len(feats))]


def pack(f: LocalFeatures) -> tuple[bytes, bytes]:
    """(feats blob, coords blob); coords stored as uint16 patch indices row, col."""
    rc = np.stack([f.xy[:, 1] - 0.5, f.xy[:, 0] - 0.5], axis=1).astype(np.uint16)
    return np.ascontiguousarray(f.feats, np.float16).tobytes(), rc.tobytes()


def blobs_fit(feats: int | None, coords: int | None, grid: tuple[int | None, int | None], dim: int) -> bool:
    """Whether blobs of these sizes in bytes can be `pack`'s for a grid and a PCA of `dim`
    dimensions: n patches, 1 <= n <= the grid's, feats n x dim fp16 and coords n x 2 uint16."""
    h, w = grid
    if feats is None or coords is None or h is None or w is None or h < 1 or w < 1:
        return False
    n, rest = divmod(coords, 4)
    return rest == 0 and 0 < n <= h * w and feats == n * dim * 2


def unpack(feats: bytes, coords: bytes, grid: tuple[int, int], dim: int) -> LocalFeatures:
    """Inverse of `pack`; ArtifactMismatchError for blobs that do not fit (`blobs_fit`)."""
    if not blobs_fit(len(feats), len(coords), grid, dim):
        raise ArtifactMismatchError(f"local descriptors of {len(feats)} + {len(coords)} bytes do not fit a "
                                    f"{grid[0]}x{grid[1]} grid and the patch PCA's {dim} dimensions")
    f = np.frombuffer(feats, np.float16).reshape(-1, dim)
    rc = np.frombuffer(coords, np.uint16).reshape(-1, 2).astype(np.float32)
    return LocalFeatures(f, np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1), grid)

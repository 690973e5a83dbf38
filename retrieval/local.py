"""Compact local (patch) descriptors for re-ranking: PCA-reduced, fp16, at most N per image.

Budget: N = 224 patches x 64 dims x 2 bytes = 28 KB, plus 4 bytes of grid coordinates per
patch (two uint16), about 29 KB per image (ViT-S at 448 px has 32 x 24 = 768 patches; ViT-B/L/g the same
grid). Patches are chosen by *distinctiveness*, their distance from the mean patch after
projection: uniform regions (sky, walls, backgrounds) sit near the mean and match everything,
so they are the first to go. More patches or dimensions help small objects and cost linearly
in storage and matching time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import l2n

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

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalPCA:
        with np.load(io.BytesIO(data)) as f:
            return cls(f["mean"].astype(np.float32), f["components"].astype(np.float32))


MIN_FIT_PATCHES = 4 * DEFAULT_DIM  # fit the index's PCA only once this many patch tokens are in hand


def identity(d: int, dim: int = DEFAULT_DIM) -> LocalPCA:
    """No learned projection: the first min(dim, d) token coordinates (for samples too small to fit)."""
    return LocalPCA(np.zeros(d, np.float32), np.eye(d, min(dim, d), dtype=np.float32))


def fit_pca(patches: np.ndarray, dim: int = DEFAULT_DIM) -> LocalPCA:
    """PCA of patch tokens (t, d); keeps min(dim, d, t - 1) components, signs fixed."""
    x = np.asarray(patches, np.float64)
    t, d = x.shape
    if t < 2:
        raise ValueError("need at least 2 patches to fit a PCA")
    k = max(1, min(dim, d, t - 1))
    mean = x.mean(axis=0)
    centred = x - mean
    # eigenvectors of the (d, d) scatter matrix are the right singular vectors of `centred`: a
    # fraction of an SVD's work (t is up to 50,000 tokens) and one BLAS-3 product, not a threaded
    # SVD that stalls next to torch's threads (1 s or more for one image's 768 tokens on 2 cores)
    _, vecs = np.linalg.eigh(centred.T @ centred)
    comps = vecs[:, ::-1][:, :k]
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    return LocalPCA(mean.astype(np.float32), comps.astype(np.float32))


@dataclass(frozen=True)
class LocalFeatures:
    """feats: (m, k) float16 unit rows; xy: (m, 2) patch centres in grid units (col + .5, row + .5)."""

    feats: np.ndarray
    xy: np.ndarray
    grid: tuple[int, int]

    def nbytes(self) -> int:
        return int(self.feats.nbytes + self.xy.nbytes)


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


def unpack(feats: bytes, coords: bytes, grid: tuple[int, int], dim: int) -> LocalFeatures:
    f = np.frombuffer(feats, np.float16).reshape(-1, dim)
    rc = np.frombuffer(coords, np.uint16).reshape(-1, 2).astype(np.float32)
    return LocalFeatures(f, np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1), grid)

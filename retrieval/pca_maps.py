"""The DINOv2 PCA picture of patch features: foreground by the first component, then three
components of the foreground as RGB. Pure: arrays and PIL images in, PIL images out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .arrays import principal_axes


def _pca(x: np.ndarray, k: int) -> np.ndarray:
    """Project rows of x (n, d) on their first k principal components (n, k), float64."""
    k = max(1, min(k, x.shape[0], x.shape[1]))
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], k))
    mean, axes, _ = principal_axes(x, k)
    return (np.asarray(x, np.float64) - mean) @ axes


def foreground_masks(
    patches: Sequence[np.ndarray], grids: Sequence[tuple[int, int]], *, threshold: float = 0.5
) -> list[np.ndarray]:
    """Foreground by the first principal component over the patches of all images.

    The component is min-max scaled to [0, 1] and thresholded. Its sign is arbitrary, so it is
    oriented so that border patches score lower on average than the rest (subjects are seldom
    cut by every edge). Returns one bool mask (h, w) per image.
    """
    _check(patches, grids)
    allp = np.concatenate([p.reshape(-1, p.shape[-1]) for p in patches])
    pc1 = _pca(allp, 1)[:, 0]
    splits = np.cumsum([h * w for h, w in grids])[:-1]
    per_image = [c.reshape(g) for c, g in zip(np.split(pc1, splits), grids)]
    border = np.concatenate([_border(c) for c in per_image])
    if border.mean() > pc1.mean():
        pc1 = -pc1
        per_image = [-c for c in per_image]
    lo, hi = float(pc1.min()), float(pc1.max())
    scale = (hi - lo) or 1.0
    return [((c - lo) / scale) > threshold for c in per_image]


def _border(a: np.ndarray) -> np.ndarray:
    if min(a.shape) <= 2:
        return a.ravel()
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def pca_rgb(
    patches: Sequence[np.ndarray], grids: Sequence[tuple[int, int]], *, threshold: float = 0.5
) -> list[np.ndarray]:
    """The DINOv2 PCA picture: first component -> foreground; a second PCA on foreground
    patches of all images; its first three components, min-max scaled jointly, as RGB.

    patches: per image (h*w, d). Returns per image float32 (h, w, 3) in [0, 1], background black.
    If fewer than 3 foreground patches exist, every patch counts as foreground.
    """
    masks = foreground_masks(patches, grids, threshold=threshold)
    if sum(int(m.sum()) for m in masks) < 3:
        masks = [np.ones(g, bool) for g in grids]
    fg = np.concatenate([p.reshape(-1, p.shape[-1])[m.ravel()] for p, m in zip(patches, masks)])
    comps = _pca(fg, 3)
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = comps.min(axis=0), comps.max(axis=0)
    comps = (comps - lo) / np.where(hi > lo, hi - lo, 1.0)
    out, start = [], 0
    for m, g in zip(masks, grids):
        rgb = np.zeros((*g, 3), np.float32)
        n = int(m.sum())
        rgb[m] = comps[start:start + n]
        start += n
        out.append(rgb)
    return out


def pca_panel(images: Sequence[Image.Image], maps: Sequence[np.ndarray], *, height: int = 256) -> Image.Image:
    """One row per image: the input beside its PCA map (nearest-neighbour upsampled), on white."""
    if len(images) != len(maps):
        raise ValueError(f"{len(images)} images but {len(maps)} maps")
    rows = []
    for im, rgb in zip(images, maps):
        w = max(1, round(im.width * height / im.height))
        left = im.convert("RGB").resize((w, height), Image.Resampling.BICUBIC)
        right = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB").resize(
            (w, height), Image.Resampling.NEAREST
        )
        rows.append((left, right))
    gap = 8
    width = max(a.width + b.width for a, b in rows) + 3 * gap
    canvas = Image.new("RGB", (width, len(rows) * (height + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (a, b) in enumerate(rows):
        y = gap + i * (height + gap)
        canvas.paste(a, (gap, y))
        canvas.paste(b, (2 * gap + a.width, y))
        draw.rectangle((2 * gap + a.width - 1, y - 1, 2 * gap + a.width + b.width, y + height), outline=(200, 200, 200))
    return canvas


def _check(patches: Sequence[np.ndarray], grids: Sequence[tuple[int, int]]) -> None:
    if not patches or len(patches) != len(grids):
        raise ValueError(f"need one grid per patch set and at least one image, got {len(patches)} and {len(grids)}")
    for p, (h, w) in zip(patches, grids):
        if p.ndim != 2 or p.shape[0] != h * w:
            raise ValueError(f"patches {p.shape} do not match grid {(h, w)}")


# ---- correspondence pictures -------------------------------------------------------------------
# What people who draw matches well do (LightGlue's and kornia's plotting helpers, OpenCV's
# drawMatches with a mask, COLMAP's match viewer): a few lines, each its own colour, thin and
# antialiased over clearly visible images; counts in a caption. Every other inlier is a dot.

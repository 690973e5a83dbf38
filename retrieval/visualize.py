"""Pictures of features. Pure: arrays and PIL images in, PIL images out; no file system."""

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


def _ramp(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (dark blue, cyan, yellow, red): a simple perceptual-ish heat ramp."""
    stops = np.array([[0.05, 0.05, 0.35], [0.0, 0.75, 0.85], [1.0, 0.9, 0.1], [0.85, 0.05, 0.05]])
    v = np.clip(np.asarray(v, np.float64), 0, 1) * (len(stops) - 1)
    i = np.minimum(v.astype(int), len(stops) - 2)
    f = (v - i)[..., None]
    return ((stops[i] * (1 - f) + stops[i + 1] * f) * 255).astype(np.uint8)


def side_by_side(a: Image.Image, b: Image.Image, *, gap: int = 8) -> tuple[Image.Image, int, float, float]:
    """Both images at the same height on white. Returns (canvas, x offset of b, scale of a, scale of b)."""
    h = max(a.height, b.height)
    sa, sb = h / a.height, h / b.height
    a2 = a.convert("RGB").resize((max(1, round(a.width * sa)), h), Image.Resampling.BICUBIC)
    b2 = b.convert("RGB").resize((max(1, round(b.width * sb)), h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (a2.width + gap + b2.width, h), "white")
    canvas.paste(a2, (0, 0))
    canvas.paste(b2, (a2.width + gap, 0))
    return canvas, a2.width + gap, sa, sb


def draw_matches(a: Image.Image, b: Image.Image, xy_a: np.ndarray, xy_b: np.ndarray, sims: np.ndarray,
                 *, width: int = 2, low: float = 0.5) -> Image.Image:
    """a and b side by side with a line per match (pixel coordinates in each image), coloured by
    cosine similarity on a fixed scale (blue at `low`, red at 1), ends marked with dots."""
    canvas, dx, sa, sb = side_by_side(a, b)
    draw = ImageDraw.Draw(canvas)
    sims = np.asarray(sims, np.float64)
    if len(sims):
        colours = _ramp((sims - low) / max(1.0 - low, 1e-6))
        for (xa, ya), (xb, yb), c in zip(np.asarray(xy_a), np.asarray(xy_b), colours):
            p, q = (xa * sa, ya * sa), (dx + xb * sb, yb * sb)
            colour = tuple(int(v) for v in c)
            draw.line([p, q], fill=colour, width=width)
            for x, y in (p, q):
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    return canvas


def heat_overlay(im: Image.Image, values: np.ndarray, *, opacity: float = 0.55) -> Image.Image:
    """Per-patch values (h, w) in [0, 1] as a heat map over the image (nearest-neighbour patches)."""
    heat = Image.fromarray(_ramp(values), "RGB").resize(im.size, Image.Resampling.NEAREST)
    return Image.blend(im.convert("RGB"), heat, opacity)


def results_html(query: dict[str, str], results: Sequence[dict[str, object]]) -> str:
    """A self-contained page (relative links only) showing the query and each result with its maps.

    query: {"image", "path"}; each result: {"rank", "score", "path", "inliers", "matches", "heatmap", "pca"},
    or {"rank", "score", "path", "inliers", "error"} when its file could not be read.
    """
    from html import escape

    def img(src: object, alt: str) -> str:
        return f'<img src="{escape(str(src))}" alt="{escape(alt)}" loading="lazy">'

    rows = []
    for r in results:
        inl = "" if r.get("inliers") is None else f", {r['inliers']} verified matches"
        if r.get("error"):
            rows.append(f'<section><h2>#{r["rank"]} &middot; score {float(r["score"]):.4f}{inl}</h2>'  # type: ignore[arg-type]
                        f'<p class="path">{escape(str(r["path"]))}</p>'
                        f'<p class="error">no maps: {escape(str(r["error"]))}</p></section>')
            continue
        rows.append(
            f'<section><h2>#{r["rank"]} &middot; score {float(r["score"]):.4f}{inl}</h2>'  # type: ignore[arg-type]
            f'<p class="path">{escape(str(r["path"]))}</p>'
            f'<div class="maps"><figure>{img(r["matches"], "matches")}<figcaption>verified patch matches'
            f'</figcaption></figure><figure>{img(r["heatmap"], "heat map")}<figcaption>best-match similarity'
            f'</figcaption></figure><figure>{img(r["pca"], "pca")}<figcaption>PCA of patch features'
            f'</figcaption></figure></div></section>'
        )
    style = ("body{font-family:sans-serif;margin:2em;background:#fafafa}img{max-width:100%;border:1px solid #ccc}"
             "section{margin-bottom:3em}.maps{display:grid;grid-template-columns:1fr;gap:1em}"
             ".path{color:#555;font-family:monospace}figure{margin:0}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>retrieval results</title>"
        f"<style>{style}</style></head><body><h1>Query</h1><p class=\"path\">{escape(query['path'])}</p>"
        f"{img(query['image'], 'query')}<h1>Results</h1>{''.join(rows)}</body></html>\n"
    )

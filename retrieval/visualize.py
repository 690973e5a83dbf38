"""Pictures of correspondences: matched patches drawn between two images, heat maps with a scale,
captions, and the HTML page of a result list. Pure: arrays and PIL images in, PIL images out; no
file system. (The PCA picture of patch features is pca_maps.py.)"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .config import DEFAULT_MAX_LINES as MAX_LINES

DISPLAY_SIDE = 512  # each image's longer side in a picture (at least): readable, and PNGs stay small
WIDE = 1.6  # both at least this much wider than tall (16:10): one above the other; 3:2 photos stay side by side
GAP = 8
_SS = 4  # supersampling of the overlay layer (see _overlay)
_FONT_SIZE = 14

Rect = tuple[int, int, int, int]  # x, y, width, height on a canvas


@dataclass(frozen=True)
class Layout:
    """Where two images go on a canvas of `size` (w, h): box (x, y, w, h) of each."""

    size: tuple[int, int]
    boxes: tuple[Rect, Rect]
    stacked: bool


def layout(a: tuple[int, int], b: tuple[int, int], *, side: int = DISPLAY_SIDE, gap: int = GAP) -> Layout:
    """Two images of sizes a, b (w, h): each scaled so its longer side is `side`, then side by side
    at a common height, or one above the other at a common width when both are wide (w >= 1.6 h).
    Equalising only enlarges, so every longer side stays at least `side`."""
    if min(*a, *b) < 1 or side < 1:
        raise ValueError(f"image sizes must be positive, got {a} and {b} (side {side})")

    def scaled(s: tuple[int, int]) -> tuple[float, float]:
        f = side / max(s)
        return s[0] * f, s[1] * f

    (wa, ha), (wb, hb) = scaled(a), scaled(b)
    stacked = a[0] >= WIDE * a[1] and b[0] >= WIDE * b[1]
    if stacked:
        w = round(max(wa, wb))
        ha2, hb2 = max(1, round(ha * w / wa)), max(1, round(hb * w / wb))
        return Layout((w, ha2 + gap + hb2), ((0, 0, w, ha2), (0, ha2 + gap, w, hb2)), True)
    h = round(max(ha, hb))
    wa2, wb2 = max(1, round(wa * h / ha)), max(1, round(wb * h / hb))
    return Layout((wa2 + gap + wb2, h), ((0, 0, wa2, h), (wa2 + gap, 0, wb2, h)), False)


def compose(a: Image.Image, b: Image.Image, lay: Layout) -> Image.Image:
    """The two images placed as `lay` says, on white."""
    canvas = Image.new("RGB", lay.size, "white")
    for im, (x, y, w, h) in zip((a, b), lay.boxes):
        canvas.paste(im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), (x, y))
    return canvas


def _place(xy: np.ndarray, size: tuple[int, int], box: Rect) -> np.ndarray:
    """Pixel coordinates (n, 2) in an image of `size` -> canvas coordinates inside `box`."""
    x, y, w, h = box
    return np.asarray(xy, np.float64).reshape(-1, 2) * [w / size[0], h / size[1]] + [x, y]


def line_grid(xy: np.ndarray, *, size: tuple[int, int], max_lines: int = MAX_LINES) -> tuple[int, int]:
    """(rows, cols) of the grid `choose_lines` uses: the finest of cols = 1, 2, ... (rows from the
    aspect of `size`, cells about square) whose occupied cells are still at most max_lines; finer
    grids stop once every point has a cell of its own."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    best = (1, 1)
    for cols in range(1, 257):
        rows = max(1, round(cols * size[1] / size[0]))
        occupied = len(np.unique(_cells(xy, size, rows, cols)))
        if occupied > max_lines:
            break
        best = (rows, cols)
        if occupied == len(xy):
            break
    return best


def _cells(xy: np.ndarray, size: tuple[int, int], rows: int, cols: int) -> np.ndarray:
    c = np.clip((xy[:, 0] / size[0] * cols).astype(np.int64), 0, cols - 1)
    r = np.clip((xy[:, 1] / size[1] * rows).astype(np.int64), 0, rows - 1)
    return r * cols + c


def choose_lines(xy: np.ndarray, strength: np.ndarray, *, size: tuple[int, int],
                 max_lines: int = MAX_LINES) -> np.ndarray:
    """Which matches to draw as lines: at most max_lines, spread over the query image.

    xy: (n, 2) the matches' pixel positions in the query, an image of `size` (w, h); strength: (n,)
    (cosine). On the grid of `line_grid`, the strongest match of each occupied cell (ties: the
    lower index). Returns indices into xy, ordered by cell (row-major). Deterministic.
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    strength = np.asarray(strength, np.float64).ravel()
    if len(strength) != len(xy):
        raise ValueError(f"{len(xy)} positions but {len(strength)} strengths")
    if max_lines < 0:
        raise ValueError(f"max_lines must be 0 or more, got {max_lines}")
    if max_lines == 0 or len(xy) == 0:
        return np.zeros(0, np.int64)
    rows, cols = line_grid(xy, size=size, max_lines=max_lines)
    cell = _cells(xy, size, rows, cols)
    order = np.lexsort((np.arange(len(xy)), -strength, cell))  # by cell, strongest first, then index
    first = np.ones(len(order), bool)
    first[1:] = cell[order[1:]] != cell[order[:-1]]
    return order[first][:max_lines]


def line_colours(n: int) -> np.ndarray:
    """n distinct, evenly spaced hues (HSV, saturated and bright) as uint8 (n, 3). Consecutive
    lines (neighbouring cells) step by about 0.38 of the circle, so neighbours differ clearly."""
    if n <= 0:
        return np.zeros((0, 3), np.uint8)
    stride = max(1, round(n * 0.382))
    while math.gcd(stride, n) != 1:  # a stride coprime with n visits every hue once
        stride += 1
    hues = (np.arange(n) * stride % n) / n
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.9, 1.0)] for h in hues], np.uint8)


def _overlay(size: tuple[int, int], draw_fn: Any) -> Image.Image:
    """An RGBA layer of `size` drawn by draw_fn(ImageDraw, scale) at _SS times the size, then
    reduced with a box filter. Pillow's ImageDraw does not antialias lines or ellipses; drawing
    big and averaging gives true antialiasing (coverage), and semi-transparent strokes composite
    correctly (Pillow resizes RGBA with premultiplied alpha). BOX, not LANCZOS: plain area
    coverage has no ringing halos around thin strokes."""
    big = Image.new("RGBA", (size[0] * _SS, size[1] * _SS), (0, 0, 0, 0))
    draw_fn(ImageDraw.Draw(big), _SS)
    return big.resize(size, Image.Resampling.BOX)


def _dot(draw: ImageDraw.ImageDraw, p: np.ndarray, r: float, fill: tuple[int, ...],
         outline: tuple[int, ...] | None = None, width: int = 0) -> None:
    x, y = float(p[0]), float(p[1])
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=width)


def draw_matches(a: Image.Image, b: Image.Image, xy_a: np.ndarray, xy_b: np.ndarray, strength: np.ndarray, *,
                 inliers: np.ndarray | None = None, max_lines: int = MAX_LINES, show_outliers: bool = False,
                 caption: Sequence[str] = (), verified: bool | None = None, side: int = DISPLAY_SIDE) -> Image.Image:
    """The two images (see `layout`) with their matches, and a caption strip below.

    xy_a, xy_b: (n, 2) pixel positions of each match in a and in b; strength: (n,) cosine;
    inliers: bool (n,), all True when None. At most max_lines inliers, chosen by `choose_lines`,
    are drawn as thin antialiased lines, each its own hue, with their ends marked; every other
    inlier is a small white dot in both images. Outliers are left out unless show_outliers: then
    at most max_lines of them as thin red lines (chosen the same way), the rest as red dots.
    caption: parts joined by " · " (wrapped to the width); a part saying how many lines are drawn
    is added. verified: tints the strip green (True) or rose (False).
    """
    xy_a = np.asarray(xy_a, np.float64).reshape(-1, 2)
    xy_b = np.asarray(xy_b, np.float64).reshape(-1, 2)
    strength = np.asarray(strength, np.float64).ravel()
    inl = np.ones(len(xy_a), bool) if inliers is None else np.asarray(inliers, bool).ravel()
    if not len(xy_a) == len(xy_b) == len(strength) == len(inl):
        raise ValueError(f"match arrays differ in length: {len(xy_a)}, {len(xy_b)}, {len(strength)}, {len(inl)}")
    lay = layout(a.size, b.size, side=side)
    pa, pb = _place(xy_a, a.size, lay.boxes[0]), _place(xy_b, b.size, lay.boxes[1])
    good, bad = np.flatnonzero(inl), np.flatnonzero(~inl)
    lines = good[choose_lines(xy_a[good], strength[good], size=a.size, max_lines=max_lines)]
    bad_lines = bad[choose_lines(xy_a[bad], strength[bad], size=a.size, max_lines=max_lines)] \
        if show_outliers else np.zeros(0, np.int64)
    colours = line_colours(len(lines))

    def paint(draw: ImageDraw.ImageDraw, s: int) -> None:
        A, B = pa * s, pb * s
        if show_outliers:
            for i in bad:
                for p in (A[i], B[i]):
                    _dot(draw, p, 1.5 * s, (230, 40, 40, 200))
            for i in bad_lines:
                draw.line([tuple(A[i]), tuple(B[i])], fill=(230, 40, 40, 150), width=s)
        drawn = set(lines.tolist())
        for i in good:
            if i not in drawn:
                for p in (A[i], B[i]):
                    _dot(draw, p, 1.5 * s, (255, 255, 255, 210), (0, 0, 0, 140), max(1, s // 2))
        for i, c in zip(lines, colours):
            rgb = tuple(int(v) for v in c)
            draw.line([tuple(A[i]), tuple(B[i])], fill=(*rgb, 210), width=round(1.5 * s))
            for p in (A[i], B[i]):
                _dot(draw, p, 2.5 * s, (*rgb, 255), (0, 0, 0, 180), max(1, s // 2))

    canvas = Image.alpha_composite(compose(a, b, lay).convert("RGBA"), _overlay(lay.size, paint)).convert("RGB")
    if len(lines) == len(good):
        drawn = f"all {len(good)} inliers drawn as lines" if len(good) else "no inliers to draw"
    else:
        drawn = f"{len(lines)} of {len(good)} inliers drawn as lines (spread over the first image), the rest as dots"
    parts = [*caption, drawn]
    if show_outliers:
        some = f", {len(bad_lines)} as lines" if len(bad_lines) < len(bad) else ""
        parts.append(f"{len(bad)} outliers in red{some}")
    return _with_caption(canvas, parts, verified=verified)


def _font(size: int = _FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font (no file needed); the scalable one where Pillow has FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def caption_lines(parts: Sequence[str], width: int, *, size: int = _FONT_SIZE) -> list[str]:
    """The parts joined by " · " into as few lines as fit `width` pixels (a part longer than the
    width gets a line of its own)."""
    font = _font(size)
    lines: list[str] = []
    for part in parts:
        if lines and font.getlength(f"{lines[-1]} · {part}") <= width:
            lines[-1] = f"{lines[-1]} · {part}"
        else:
            lines.append(part)
    return lines


def _with_caption(canvas: Image.Image, parts: Sequence[str], *, verified: bool | None = None) -> Image.Image:
    """canvas with a strip of text below: light grey, or tinted green/rose by `verified`."""
    pad, size = 8, _FONT_SIZE
    lines = caption_lines(parts, canvas.width - 2 * pad, size=size)
    if not lines:
        return canvas
    step = size + 5
    bg = {True: (223, 240, 223), False: (246, 222, 222), None: (238, 238, 238)}[verified]
    out = Image.new("RGB", (canvas.width, canvas.height + 2 * pad + step * len(lines)), bg)
    out.paste(canvas, (0, 0))
    draw, font = ImageDraw.Draw(out), _font(size)
    for i, text in enumerate(lines):
        draw.text((pad, canvas.height + pad + i * step), text, font=font, fill=(30, 30, 30))
    return out


def _ramp(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float in [0, 1]: blue, cyan, yellow, red. Only hue and saturation
    reach the picture (see heat_overlay), so the stops differ in hue."""
    stops = np.array([[0.15, 0.25, 0.95], [0.0, 0.8, 0.85], [1.0, 0.85, 0.0], [0.9, 0.05, 0.05]])
    v = np.clip(np.asarray(v, np.float64), 0, 1) * (len(stops) - 1)
    i = np.minimum(v.astype(int), len(stops) - 2)
    f = (v - i)[..., None]
    return np.asarray(stops[i] * (1 - f) + stops[i + 1] * f)


_LUMA = np.array([0.299, 0.587, 0.114])  # the weights of Pillow's "L" (ITU-R 601)


def _colour_blend(base: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The W3C/Photoshop "color" blend: hue and saturation of `colour`, luminance of `base` (float
    RGB in [0, 1], same shape). Out-of-gamut results are pulled toward grey at the same luminance
    (ClipColor), so the luminance is kept exactly."""
    lum = base @ _LUMA
    c = colour + (lum - colour @ _LUMA)[..., None]
    lo, hi = c.min(axis=-1), c.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        down = np.where(lo < 0, lum / (lum - lo), 1.0)
        up = np.where(hi > 1, (1 - lum) / (hi - lum), 1.0)
    k = np.nan_to_num(np.minimum(down, up), nan=0.0)[..., None]
    return np.clip(lum[..., None] + (c - lum[..., None]) * k, 0, 1)


def heat_overlay(im: Image.Image, values: np.ndarray, *, opacity: float = 0.85) -> Image.Image:
    """Per-patch values (h, w) in [0, 1] as colour over the image: the hue of `_ramp` (bilinear
    between patch centres) with the image's own luminance, so every grey level, and with it the
    picture, stays as it was; `opacity` keeps a little of the image's own colour."""
    values = np.asarray(values, np.float32)
    if values.ndim != 2:
        raise ValueError(f"values must be a (h, w) patch grid, got shape {values.shape}")
    v = np.asarray(Image.fromarray(values, "F").resize(im.size, Image.Resampling.BILINEAR))
    base = np.asarray(im.convert("RGB"), np.float64) / 255
    out = base * (1 - opacity) + _colour_blend(base, _ramp(v)) * opacity
    return Image.fromarray(np.round(out * 255).astype(np.uint8), "RGB")


def colour_bar(height: int, *, ticks: Sequence[float] = (0.0, 0.5, 1.0), label: str = "cosine",
               grey: float = 0.55) -> Image.Image:
    """A vertical scale for `heat_overlay` (1 at the top): its colours as they look over a
    mid-grey image (luminance `grey`), ticks labelled, `label` on top."""
    font, bar_w, top, pad = _font(12), 16, 22, 6
    inner = max(20, height - top - pad)
    v = np.linspace(1, 0, inner)[:, None].repeat(bar_w, axis=1)
    rgb = _colour_blend(np.full((*v.shape, 3), grey), _ramp(v))
    width = max(pad + bar_w + 6 + int(font.getlength("0.5")) + pad, int(font.getlength(label)) + 2 * pad)
    out = Image.new("RGB", (width, max(height, inner + top + pad)), "white")
    out.paste(Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB"), (pad, top))
    draw = ImageDraw.Draw(out)
    draw.rectangle((pad - 1, top - 1, pad + bar_w, top + inner), outline=(90, 90, 90))
    draw.text((pad, 3), label, font=font, fill=(30, 30, 30))
    for t in ticks:
        y = top + round((1 - t) * (inner - 1))
        draw.line((pad + bar_w, y, pad + bar_w + 4, y), fill=(30, 30, 30))
        draw.text((pad + bar_w + 6, y), f"{t:g}", font=font, fill=(30, 30, 30), anchor="lm")
    return out


def heat_pair(a: Image.Image, b: Image.Image, values_a: np.ndarray, values_b: np.ndarray, *,
              caption: Sequence[str] = (), side: int = DISPLAY_SIDE) -> Image.Image:
    """Both images with `heat_overlay` (values on a fixed 0..1 scale), laid out as `layout` says,
    a colour bar on the right and a caption strip below."""
    lay = layout(a.size, b.size, side=side)
    canvas = Image.new("RGB", lay.size, "white")
    for im, v, (x, y, w, h) in zip((a, b), (values_a, values_b), lay.boxes):
        canvas.paste(heat_overlay(im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), v), (x, y))
    bar = colour_bar(min(lay.size[1], 320))
    out = Image.new("RGB", (canvas.width + bar.width + GAP, max(canvas.height, bar.height)), "white")
    out.paste(canvas, (0, 0))
    out.paste(bar, (canvas.width + GAP, 0))
    return _with_caption(out, caption)


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
            f'<div class="maps"><figure>{img(r["matches"], "matches")}<figcaption>verified patch matches of the '
            f'full patch tokens: a sample spread over the query as coloured lines, the others as dots; counts '
            f'below the picture</figcaption></figure><figure>{img(r["heatmap"], "heat map")}<figcaption>the '
            f'best-match cosine of each patch in the other image, scale on the right</figcaption></figure>'
            f'<figure>{img(r["pca"], "pca")}<figcaption>PCA of patch features</figcaption></figure></div></section>'
        )
    style = ("body{font-family:sans-serif;margin:2em;background:#fafafa}img{max-width:100%;border:1px solid #ccc}"
             "section{margin-bottom:3em}.maps{display:grid;grid-template-columns:1fr;gap:1em}"
             ".path{color:#555;font-family:monospace}figure{margin:0}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>retrieval results</title>"
        f"<style>{style}</style></head><body><h1>Query</h1><p class=\"path\">{escape(query['path'])}</p>"
        f"{img(query['image'], 'query')}<h1>Results</h1>{''.join(rows)}</body></html>\n"
    )

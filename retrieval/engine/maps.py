"""Why did a result match? Patch correspondences between two images, drawn three ways."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import images, pca_maps, visualize
from .. import rerank as rr
from ..arrays import l2n
from ..backbone import Backbone
from ..config import EngineConfig, ImageConfig
from ..errors import BadImageError, RetrievalError
from ..types import Box, shown
from .embedding import embed_queries
from .files import atomic_write
from .index import Index
from .search import SearchResult

log = logging.getLogger(__name__)

_RESULT_FILE = re.compile(r"\d{3,}_(matches|heatmap|pca)\.png")  # what `explain` names a result's pictures


@dataclass(frozen=True)
class View:
    """One image as the model saw it: picture (model input size), patch tokens (h*w, d), grid (h, w);
    and `display`, the same image (box-cropped likewise) for pictures: longer side
    visualize.DISPLAY_SIDE, or the original's size when that is smaller."""

    picture: Image.Image
    patches: np.ndarray
    grid: tuple[int, int]
    display: Image.Image


@dataclass(frozen=True)
class Pair:
    a: View
    b: View
    verification: rr.Verification

    @property
    def n_matches(self) -> int:
        return len(self.verification.matches.ia)

    @property
    def n_inliers(self) -> int:
        return self.verification.n_inliers

    @property
    def verified(self) -> bool:
        return self.n_inliers >= rr.MIN_INLIERS


def view(path: str | Path, *, backbone: Backbone, image: ImageConfig, bbox: Box | None = None) -> View:
    """One file as the index sees it at its first scale, embedded by the one pipeline
    (engine/embedding.py), with a readable-size picture of it for drawing; BadImageError when it
    cannot be used."""
    config = EngineConfig(image=image, batch=1, workers=0, decode="cpu")  # one scale: (1.0,)
    e = embed_queries([str(path)], backbone=backbone, config=config, box=bbox)[0]
    return View(e.picture(), e.tokens(), e.grid, display_picture(path, image, bbox))


def display_picture(path: str | Path, image: ImageConfig, bbox: Box | None = None, *,
                    data: bytes | None = None) -> Image.Image:
    """The picture people look at: the file (or its box) decoded for a longer side of at least
    visualize.DISPLAY_SIDE where it has that many pixels, scaled down to that side when larger.
    data: the file's bytes, when the caller holds them (the file may be gone)."""
    with images.pixel_limit(image.max_pixels):
        full, _ = images.decode(path, max_pixels=image.max_pixels, data=data,
                                min_side_hint=None if bbox is not None else visualize.DISPLAY_SIDE)
    if bbox is not None:
        full = images.crop_box(full, bbox)
    scale = visualize.DISPLAY_SIDE / max(full.size)
    return full if scale >= 1 else full.resize(
        (max(1, round(full.width * scale)), max(1, round(full.height * scale))), Image.Resampling.LANCZOS)


def pair(a: View, b: View, *, threshold: float = 0.5, kind: str = "similarity") -> Pair:
    """Mutual-NN patch matches (full tokens, cosine >= threshold) verified by RANSAC on patch centres."""
    from ..local import grid_xy

    v = rr.verify(l2n(a.patches), grid_xy(a.grid), l2n(b.patches), grid_xy(b.grid), threshold=threshold,
                  kind=kind)
    return Pair(a, b, v)


def model_label(backbone: Backbone) -> str:
    """The backbone's name, and "(random weights)" when it has them: pictures must never pass for real results."""
    return backbone.name + (" (random weights)" if backbone.weights_id.startswith("random:") else "")


def caption(p: Pair, *, model: str, score: float | None = None, rank: int | None = None) -> list[str]:
    """What a picture of `p` says below it: rank and global similarity when known (a query
    result), the match and inlier counts with the verdict, and the model."""
    parts = [] if rank is None else [f"#{rank}"]
    if score is not None:
        parts.append(f"similarity {score:.4f}")
    verdict = f"{'verified' if p.verified else 'not verified'} ({rr.MIN_INLIERS} needed)"
    parts += [f"{p.n_matches} matches, {p.n_inliers} inliers: {verdict}", model]
    return parts


def _shown_xy(w: View, idx: np.ndarray, patch_size: int) -> np.ndarray:
    """Patch centres in the display image's pixels."""
    from ..local import grid_xy

    scale = np.array(w.display.size) / np.array(w.picture.size)
    return grid_xy(w.grid)[idx] * patch_size * scale


def drawn_lines(p: Pair, *, patch_size: int, max_lines: int = visualize.MAX_LINES) -> np.ndarray:
    """Which inliers the matches picture (`render`) draws as lines: indices into the inliers (in
    the order of matches), at most max_lines, in drawing order; the same `visualize.choose_lines`
    call on the same positions and cosines as `visualize.draw_matches` makes."""
    m, inl = p.verification.matches, np.asarray(p.verification.inliers, bool)
    return visualize.choose_lines(_shown_xy(p.a, m.ia[inl], patch_size), np.asarray(m.sim)[inl],
                                  size=p.a.display.size, max_lines=max_lines)


def render(p: Pair, *, patch_size: int, max_lines: int = visualize.MAX_LINES, show_outliers: bool = False,
           text: list[str] | None = None) -> dict[str, Image.Image]:
    """{"matches", "heatmap", "pca"} pictures of a pair, drawn on the views' display images; `text`
    (see `caption`) in the strip below the matches, its last part (the model) below the heat map."""
    m, v = p.verification.matches, p.verification
    text = text or []
    matches = visualize.draw_matches(p.a.display, p.b.display, _shown_xy(p.a, m.ia, patch_size),
                                     _shown_xy(p.b, m.ib, patch_size), m.sim,
                                     inliers=v.inliers, max_lines=max_lines, show_outliers=show_outliers,
                                     caption=text, verified=p.verified)
    s = l2n(p.a.patches) @ l2n(p.b.patches).T
    # cosine on a fixed 0..1 scale, so maps of different results compare (no per-pair stretching)
    best_a, best_b = s.max(axis=1).reshape(p.a.grid), s.max(axis=0).reshape(p.b.grid)
    heat = visualize.heat_pair(p.a.display, p.b.display, np.clip(best_a, 0, 1), np.clip(best_b, 0, 1),
                               caption=["each patch's best-match cosine in the other image", *text[-1:]])
    maps = pca_maps.pca_rgb([p.a.patches, p.b.patches], [p.a.grid, p.b.grid])
    pca = pca_maps.pca_panel([p.a.picture, p.b.picture], maps, height=max(p.a.picture.height, 64))
    return {"matches": matches, "heatmap": heat, "pca": pca}


def _png(im: Image.Image, out: Path, description: str | None = None) -> Path:
    """PNG, atomically; `description` goes into its text chunk (what the caption strip says)."""
    info = None
    if description:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt("Description", description)
    return atomic_write(out, lambda f: im.save(f, format="PNG", pnginfo=info))


def explain(idx: Index, query: str | Path, result: SearchResult, out_dir: str | Path, *,
            bbox: Box | None = None, max_lines: int = visualize.MAX_LINES, show_outliers: bool = False) -> Path:
    """Write matches / heat map / PCA PNGs for each hit and an index.html that shows them all.
    What an earlier call wrote there (and only that) is deleted first, so no stale result stays.
    max_lines, show_outliers: see visualize.draw_matches."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RetrievalError(f"--out {shown(str(out))} is a file; pass a folder for the maps (created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.name in ("query.png", "index.html") or _RESULT_FILE.fullmatch(old.name):
            old.unlink()
    bb = idx.backbone()
    q = view(query, backbone=bb, image=idx.config.image, bbox=bbox)
    _png(q.display, out / "query.png")
    model = model_label(bb)
    rows: list[dict[str, Any]] = []
    for h in result.hits:
        try:
            other = view(h.path, backbone=bb, image=idx.config.image)
        except BadImageError as e:  # moved or damaged since it was indexed: say so, keep the page
            log.warning("wrote no pictures for result #%d %s: %s (changed since it was indexed; `retrieve index` of "
                        "its folder updates the index)", h.rank, shown(h.path), e.reason)
            rows.append({"rank": h.rank, "score": h.score, "path": shown(h.path), "inliers": h.inliers,
                         "error": e.reason})
            continue
        p = pair(q, other)
        text = caption(p, model=model, score=h.score, rank=h.rank)
        pics = render(p, patch_size=bb.patch_size, max_lines=max_lines, show_outliers=show_outliers, text=text)
        names = {}
        for kind, pic in pics.items():
            name = f"{h.rank:03d}_{kind}.png"
            _png(pic, out / name, " · ".join(text))
            names[kind] = name
        rows.append({"rank": h.rank, "score": h.score, "path": shown(h.path), "inliers": h.inliers, **names})
    page = visualize.results_html({"image": "query.png", "path": shown(str(Path(query).resolve()))}, rows)
    return atomic_write(out / "index.html", lambda f: f.write(page.encode()))


def match_files(a: str | Path, b: str | Path, *, backbone: Backbone, image: ImageConfig, out: str | Path,
                threshold: float = 0.5, max_lines: int = visualize.MAX_LINES, show_outliers: bool = False) -> Pair:
    """`retrieve match`: the matches picture of two files (heat map and PCA beside it as *_heatmap/_pca).

    Its caption has no similarity score: without an index there is no whitening, so no number
    comparable to a query's score exists; the inlier count and its verdict say how good the match is.
    """
    p = pair(view(a, backbone=backbone, image=image), view(b, backbone=backbone, image=image), threshold=threshold)
    text = caption(p, model=model_label(backbone))
    pics = render(p, patch_size=backbone.patch_size, max_lines=max_lines, show_outliers=show_outliers, text=text)
    for kind, path in match_paths(out).items():
        _png(pics[kind], path, " · ".join(text))
    return p


def match_paths(out: str | Path) -> dict[str, Path]:
    """The files `match_files` writes for `out`: the matches there, the heat map and PCA beside it."""
    out = Path(out)
    return {"matches": out, **{kind: out.with_name(f"{out.stem}_{kind}{out.suffix or '.png'}")
                               for kind in ("heatmap", "pca")}}

__all__ = ["Pair", "View", "caption", "explain", "match_files", "match_paths", "model_label", "pair", "render"]

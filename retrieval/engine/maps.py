"""Why did a result match? Patch correspondences between two images, drawn three ways."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import visualize
from .. import rerank as rr
from ..arrays import l2n
from ..backbone import Backbone
from ..config import EngineConfig, ImageConfig
from ..errors import BadImageError, RetrievalError
from ..types import shown
from .descriptors import embed_queries
from .files import atomic_write
from .index import Index
from .search import SearchResult

Box = tuple[float, float, float, float]
_RESULT_FILE = re.compile(r"\d{3,}_(matches|heatmap|pca)\.png")  # what `explain` names a result's pictures


@dataclass(frozen=True)
class View:
    """One image as the model saw it: picture (model input size), patch tokens (h*w, d), grid (h, w)."""

    picture: Image.Image
    patches: np.ndarray
    grid: tuple[int, int]


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


def view(path: str | Path, *, backbone: Backbone, image: ImageConfig, bbox: Box | None = None) -> View:
    """One file as the index sees it at its first scale, embedded by the one pipeline
    (engine/descriptors.py); BadImageError when it cannot be used."""
    config = EngineConfig(image=image, batch_size=1, workers=0, decode="cpu")  # one scale: (1.0,)
    e = embed_queries([str(path)], backbone=backbone, config=config, box=bbox)[0]
    assert e.patches is not None
    return View(e.picture(), e.patches, e.grid)


def pair(a: View, b: View, *, threshold: float = 0.5, kind: str = "similarity") -> Pair:
    """Mutual-NN patch matches (full tokens, cosine >= threshold) verified by RANSAC on patch centres."""
    from ..local import grid_xy

    v = rr.verify(l2n(a.patches), grid_xy(a.grid), l2n(b.patches), grid_xy(b.grid), threshold=threshold,
                  kind=kind)
    return Pair(a, b, v)


def render(p: Pair, *, patch_size: int = 14) -> dict[str, Image.Image]:
    """{"matches", "heatmap", "pca"} pictures of a pair."""
    from ..local import grid_xy

    m, inl = p.verification.matches, p.verification.inliers
    xa = grid_xy(p.a.grid)[m.ia[inl]] * patch_size
    xb = grid_xy(p.b.grid)[m.ib[inl]] * patch_size
    matches = visualize.draw_matches(p.a.picture, p.b.picture, xa, xb, m.sim[inl])
    s = l2n(p.a.patches) @ l2n(p.b.patches).T
    # cosine on a fixed 0..1 scale, so maps of different results compare (no per-pair stretching)
    best_a, best_b = s.max(axis=1).reshape(p.a.grid), s.max(axis=0).reshape(p.b.grid)
    heat, *_ = visualize.side_by_side(visualize.heat_overlay(p.a.picture, np.clip(best_a, 0, 1)),
                                      visualize.heat_overlay(p.b.picture, np.clip(best_b, 0, 1)))
    maps = visualize.pca_rgb([p.a.patches, p.b.patches], [p.a.grid, p.b.grid])
    pca = visualize.pca_panel([p.a.picture, p.b.picture], maps, height=max(p.a.picture.height, 64))
    return {"matches": matches, "heatmap": heat, "pca": pca}


def _png(im: Image.Image, out: Path) -> Path:
    return atomic_write(out, lambda f: im.save(f, format="PNG"))


def explain(idx: Index, query: str | Path, result: SearchResult, out_dir: str | Path, *,
            bbox: Box | None = None) -> Path:
    """Write matches / heat map / PCA PNGs for each hit and an index.html that shows them all.
    What an earlier call wrote there (and only that) is deleted first, so no stale result stays."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RetrievalError(f"--out {shown(str(out))} is a file; pass a folder for the maps (created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.name in ("query.png", "index.html") or _RESULT_FILE.fullmatch(old.name):
            old.unlink()
    bb = idx.backbone()
    q = view(query, backbone=bb, image=idx.config.image, bbox=bbox)
    _png(q.picture, out / "query.png")
    rows: list[dict[str, Any]] = []
    for h in result.hits:
        try:
            other = view(h.path, backbone=bb, image=idx.config.image)
        except BadImageError as e:  # moved or damaged since it was indexed: say so, keep the page
            rows.append({"rank": h.rank, "score": h.score, "path": shown(h.path), "inliers": h.inliers,
                         "error": e.reason})
            continue
        pics = render(pair(q, other), patch_size=bb.patch_size)
        names = {}
        for kind, pic in pics.items():
            name = f"{h.rank:03d}_{kind}.png"
            _png(pic, out / name)
            names[kind] = name
        rows.append({"rank": h.rank, "score": h.score, "path": shown(h.path), "inliers": h.inliers, **names})
    page = visualize.results_html({"image": "query.png", "path": shown(str(Path(query).resolve()))}, rows)
    return atomic_write(out / "index.html", lambda f: f.write(page.encode()))


def match_files(a: str | Path, b: str | Path, *, backbone: Backbone, image: ImageConfig, out: str | Path,
                threshold: float = 0.5) -> Pair:
    """`retrieve match`: the matches picture of two files (heat map and PCA beside it as *_heatmap/_pca)."""
    p = pair(view(a, backbone=backbone, image=image), view(b, backbone=backbone, image=image), threshold=threshold)
    pics = render(p, patch_size=backbone.patch_size)
    out = Path(out)
    _png(pics["matches"], out)
    for kind in ("heatmap", "pca"):
        _png(pics[kind], out.with_name(f"{out.stem}_{kind}{out.suffix or '.png'}"))
    return p


__all__ = ["Pair", "View", "explain", "match_files", "pair", "render"]

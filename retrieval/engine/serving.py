"""What a long-running service asks of an open index, beyond `Index`: queries embedded together
with what is needed to explain them later (the model's picture, the original size, the box),
indexed pictures' files by id, and a query's correspondences with one indexed image.

What takes the `Index` runs on the one thread that owns it (its SQLite connection and model);
`retrieval.serve` sees to that. The rest needs neither: `jpeg_bytes` and `Correspondences.picture`
(decoding, drawing) run on any thread, and a `Census` belongs to the thread that made it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import images
from ..config import ImageConfig, SearchOptions
from ..errors import BadImageError, UsageError
from ..rerank import MIN_INLIERS
from ..store import Store
from ..types import Box, box_inside
from ..visualize import MAX_LINES, line_colours
from .embedding import Embedding, embed_stream
from .forward import from_prepared
from .index import Index
from .maps import Pair, View, caption, display_picture, drawn_lines, model_label, pair, render, view
from .search import Query, SearchResult

PICTURE_KINDS = ("matches", "heatmap", "pca")


@dataclass(frozen=True)
class ExplainedQuery:
    """An embedded query and what its correspondences are drawn and measured with: the model's
    picture of it (first scale), the original upright size (w, h), the box it was cropped to, and
    the uploaded bytes, from which the readable-size picture is decoded when first drawn (not
    before: a search that is never explained does not pay for a second decode)."""

    query: Query
    picture: Image.Image
    size: tuple[int, int]
    source: bytes
    name: str  # what messages call the file
    image: ImageConfig
    box: Box | None = None

    @cached_property
    def display(self) -> Image.Image:
        """The readable-size picture the correspondences are drawn on."""
        return display_picture(self.name, self.image, self.box, data=self.source)

    def view(self) -> View:
        return View(self.picture, self.query.patches, self.query.grid, self.display)


@dataclass(frozen=True)
class IndexedQuery:
    """An indexed image as the query ("more like this", `similar`): searched with its stored
    descriptor, no upload held (source is empty); its correspondences are drawn from its file,
    read and embedded again for each result opened (the store keeps no full patch tokens)."""

    image_id: int
    path: str
    size: tuple[int, int]  # upright (w, h) as indexed
    source: bytes = b""
    box: Box | None = None


def similar(idx: Index, image_id: int, options: SearchOptions) -> tuple[IndexedQuery, SearchResult] | None:
    """More like the indexed image `image_id` (Index.similar: its stored descriptor, itself left
    out), with the query to explain its results by; None when no such image is indexed."""
    q = indexed_query(idx, image_id)
    return None if q is None else (q, idx.similar(image_id, options))


def indexed_query(idx: Index, image_id: int) -> IndexedQuery | None:
    """An indexed image (status ok) as a query: its file and upright size; None when no such image
    is indexed."""
    size = idx.store.size_of(image_id)
    if size is None:
        return None
    path = idx.store.paths([image_id]).get(image_id)
    return None if path is None else IndexedQuery(image_id, path, size)


@dataclass(frozen=True)
class Upload:
    """An uploaded query read for the model (UploadReader.read): its pixels at each scale, its
    original upright size, its box (the pixels are the crop's), and its bytes, kept for the
    readable-size picture drawn from them later."""

    data: bytes
    prepared: images.PreparedFile
    box: Box | None = None


@dataclass(frozen=True)
class UploadReader:
    """How an upload is read for an index's model, exactly as `Index.queries` reads a file: decoded
    once, under the index's pixel limit, resized to each scale. Made from the Index (on its thread:
    `of`), then used on any threads at once with no Index (pixel_limit's scopes are shared), so that
    the thread that owns the model only runs forward passes. `name` stands for the upload in errors."""

    image: ImageConfig
    sizes: tuple[int, ...]
    patch_size: int
    name: str = "upload"

    @classmethod
    def of(cls, idx: Index) -> UploadReader:
        bb, config = idx.backbone(), idx.config
        sizes = tuple(images.scaled_size(config.image.size, s, bb.patch_size) for s in config.pooling.scales)
        return cls(config.image, sizes, bb.patch_size)

    def read(self, data: bytes, *, box: Box | None = None) -> Upload:
        """BadImageError for an upload that cannot be used; UsageError for a box that does not lie
        inside the upright image."""
        with images.pixel_limit(self.image.max_pixels):
            pf = images.read_bytes(self.name, data, sizes=self.sizes, patch_size=self.patch_size,
                                   max_pixels=self.image.max_pixels, box=box)
        if box is not None:
            box_inside(box, pf.original_wh)
        return Upload(data, pf, box)


def embed_explained(idx: Index, uploads: Sequence[Upload], *, name: str = "upload") -> list[ExplainedQuery]:
    """Uploads read by this index's UploadReader, embedded together in batched forward passes
    (boxed ones too: their pixels are already the crop's), in input order, each keeping its
    picture, size and bytes; `name` stands for them in messages."""
    bb, config = idx.backbone(), idx.config
    done: dict[int, Embedding] = {}
    stream = (from_prepared(i, name, u.prepared) for i, u in enumerate(uploads))
    for group in embed_stream(stream, backbone=bb, config=config):
        for item in group:
            assert isinstance(item, Embedding)  # the uploads are decoded: nothing is skipped
            done[item.decoded.index] = item
    out = []
    for i, u in enumerate(uploads):
        e = done[i]
        out.append(ExplainedQuery(Query.of(e), e.picture(), e.decoded.original_wh, u.data, name, config.image, u.box))
    return out


def indexed_path(idx: Index, image_id: int) -> str | None:
    """The file of an indexed image (status ok), or None when no such image is indexed."""
    q = indexed_query(idx, image_id)
    return None if q is None else q.path


def jpeg_bytes(path: str | Path, *, max_pixels: int, max_side: int | None = None) -> bytes:
    """An image file (an indexed one: `indexed_path`) upright RGB, at most max_side pixels on its
    longer side, as JPEG bytes; no Index needed (any thread). BadImageError when it is gone or damaged."""
    im = images.load_image(path, max_pixels=max_pixels, min_side_hint=max_side)
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Census:
    """How many images an index holds, read through a connection of its own (so that a thread
    other than the Index's can answer while the Index's is busy), counted again only when some
    connection has committed since the last count (PRAGMA data_version). Use it on the thread
    that made it."""

    def __init__(self, store: Path) -> None:
        self.store = Store(store, migrate=False)  # the Index has migrated it; only SELECTs here
        self._counted: tuple[int, int] | None = None  # (data_version, images)

    def count(self) -> int:
        version = self.store.commits()
        if self._counted is None or self._counted[0] != version:
            self._counted = (version, self.store.count("ok"))
        return self._counted[1]

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class Correspondences:
    pair: Pair
    patch_size: int
    query_size: tuple[int, int]
    query_box: Box | None
    other_size: tuple[int, int]
    model: str  # the caption's model label (maps.model_label)

    def to_json(self) -> dict[str, Any]:
        """{"matches", "inliers", "verified", "min_inliers", "pairs": [[qx, qy, x, y], ...],
        "similarity": [...], "lines": [...], "line_colours": [...], "max_lines", "query_size",
        "query_box", "size"}: the verified matches (all inliers) as patch centres in each image's own
        upright pixels (the query's: the uploaded image, box included), and which of them the
        matches picture draws as lines (indices into pairs, in its order, with its colours)."""
        from ..local import grid_xy

        v = self.pair.verification
        m, inl = v.matches, v.inliers
        qa = _to_original(grid_xy(self.pair.a.grid)[m.ia[inl]] * self.patch_size, self.pair.a.picture.size,
                          self.query_size, self.query_box)
        xb = _to_original(grid_xy(self.pair.b.grid)[m.ib[inl]] * self.patch_size, self.pair.b.picture.size,
                          self.other_size, None)
        pairs = np.concatenate([qa, xb], axis=1) if len(qa) else np.zeros((0, 4))
        lines = drawn_lines(self.pair, patch_size=self.patch_size)
        return {"matches": self.pair.n_matches, "inliers": self.pair.n_inliers,
                "verified": self.pair.verified, "min_inliers": MIN_INLIERS,
                "query_size": list(self.query_size), "size": list(self.other_size),
                "query_box": None if self.query_box is None else [float(c) for c in self.query_box],
                "pairs": [[round(float(c), 1) for c in row] for row in pairs],
                "similarity": [round(float(s), 4) for s in np.asarray(m.sim)[inl]],
                "lines": [int(i) for i in lines], "max_lines": MAX_LINES,
                "line_colours": ["#%02x%02x%02x" % tuple(int(c) for c in rgb) for rgb in line_colours(len(lines))]}

    def picture(self, kind: str = "matches") -> Image.Image:
        """The picture `retrieve match` draws (matches), or its heat map / PCA companion."""
        if kind not in PICTURE_KINDS:
            raise UsageError(f"kind must be one of {', '.join(PICTURE_KINDS)}, got {kind!r}")
        text = caption(self.pair, model=self.model)
        return render(self.pair, patch_size=self.patch_size, text=text)[kind]


def correspondences(idx: Index, q: ExplainedQuery | IndexedQuery, image_id: int) -> Correspondences | None:
    """The verified patch matches between a query (an upload, or an indexed image) and an indexed
    image (None: no such image), made as `retrieve match` makes them."""
    found = indexed_query(idx, image_id)
    if found is None:
        return None
    bb = idx.backbone()
    other = view(found.path, backbone=bb, image=idx.config.image)
    mine = q.view() if isinstance(q, ExplainedQuery) else view(q.path, backbone=bb, image=idx.config.image)
    return Correspondences(pair(mine, other), bb.patch_size, q.size, q.box, found.size, model_label(bb))


def pair_correspondences(idx: Index, a: int, b: int) -> Correspondences | None:
    """Two indexed images' verified patch matches, `a` as the query (a duplicate group's keeper,
    `b` a member): drawn from both files as `retrieve dedupe --html` and `retrieve match` draw a
    pair; None when either is not indexed."""
    q = indexed_query(idx, a)
    return None if q is None else correspondences(idx, q, b)


def _to_original(xy: np.ndarray, picture: tuple[int, int], size: tuple[int, int], box: Box | None) -> np.ndarray:
    """Pixels of the model's picture (w, h) -> pixels of the upright original (w, h), through the
    crop the box made (images.crop_pixels: clamped, rounded outwards)."""
    x0, y0, x1, y1 = (0, 0, *size) if box is None else images.crop_pixels(box, size)
    cw, ch = float(x1 - x0), float(y1 - y0)
    out = np.asarray(xy, np.float64).reshape(-1, 2).copy()
    out[:, 0] = x0 + out[:, 0] * cw / picture[0]
    out[:, 1] = y0 + out[:, 1] * ch / picture[1]
    return out


__all__ = ["Census", "Correspondences", "ExplainedQuery", "IndexedQuery", "PICTURE_KINDS", "Upload",
           "UploadReader", "correspondences", "embed_explained", "indexed_path", "jpeg_bytes", "pair_correspondences",
           "similar",
           "BadImageError"]

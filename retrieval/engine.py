"""The only module that knows the whole pipeline: files -> pixels -> tokens -> outputs."""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from . import images, visualize
from .backbone import Backbone, load_backbone
from .config import BackboneConfig, ImageConfig
from .errors import BadImageError, RetrievalError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """Tokens of one image. cls: (d,); patches: (h*w, d); grid (h, w); size: original (w, h)."""

    index: int
    path: str
    cls: np.ndarray
    patches: np.ndarray
    grid: tuple[int, int]
    size: tuple[int, int]


@dataclass(frozen=True)
class Skipped:
    index: int
    path: str
    reason: str


def open_backbone(cfg: BackboneConfig) -> Backbone:
    return load_backbone(cfg.name, weights=cfg.weights, device=cfg.device, dtype=cfg.dtype)


def default_workers() -> int:
    """Decoder processes: leave a core for the model."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _load_one(path: str, *, size: int, patch_size: int, mean: tuple[float, ...], std: tuple[float, ...],
              max_pixels: int) -> tuple[np.ndarray, tuple[int, int]] | BadImageError:
    try:
        return images.preprocess(path, size=size, patch_size=patch_size, mean=mean, std=std, max_pixels=max_pixels)
    except BadImageError as e:
        return e


def decoded(
    paths: Sequence[str], *, backbone: Backbone, image: ImageConfig, workers: int
) -> Iterator[tuple[int, str, tuple[np.ndarray, tuple[int, int]] | BadImageError]]:
    """(index, path, (x, original size) or error) in input order; decoding runs in `workers` processes."""
    load = partial(_load_one, size=image.size, patch_size=backbone.patch_size, mean=backbone.mean,
                   std=backbone.std, max_pixels=image.max_pixels)
    if workers <= 0 or len(paths) <= 1:
        for i, p in enumerate(paths):
            yield i, p, load(p)
        return
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for i, (p, result) in enumerate(zip(paths, pool.map(load, paths, chunksize=4))):
            yield i, p, result


def embed(
    paths: Sequence[str | Path],
    *,
    backbone: Backbone,
    image: ImageConfig,
    batch_size: int = 16,
    workers: int | None = None,
) -> Iterator[Embedded | Skipped]:
    """Embed files, batching images of equal shape. Yields results as batches complete
    (not in input order); every input yields exactly one Embedded or Skipped."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    strs = [str(p) for p in paths]
    buckets: dict[tuple[int, int], list[tuple[int, str, np.ndarray, tuple[int, int]]]] = {}
    n_workers = default_workers() if workers is None else workers
    for i, p, result in decoded(strs, backbone=backbone, image=image, workers=n_workers):
        if isinstance(result, BadImageError):
            yield Skipped(i, p, result.reason)
            continue
        x, size = result
        bucket = buckets.setdefault(tuple(x.shape[1:]), [])
        bucket.append((i, p, x, size))
        if len(bucket) >= batch_size:
            yield from _run(backbone, buckets.pop(tuple(x.shape[1:])))
    for bucket in buckets.values():
        yield from _run(backbone, bucket)


def _run(backbone: Backbone, items: list[tuple[int, str, np.ndarray, tuple[int, int]]]) -> Iterator[Embedded]:
    x = torch.from_numpy(np.stack([it[2] for it in items]))
    tokens = backbone.encode(x)
    cls = tokens.cls.cpu().numpy()
    patches = tokens.patches.cpu().numpy()
    for j, (i, p, _, size) in enumerate(items):
        yield Embedded(i, p, cls[j], patches[j], tokens.grid, size)


def embed_all(paths: Sequence[str | Path], **kwargs: object) -> tuple[list[Embedded], list[Skipped]]:
    """`embed`, collected and put back in input order."""
    done: list[Embedded] = []
    skipped: list[Skipped] = []
    for r in embed(paths, **kwargs):  # type: ignore[arg-type]
        (done if isinstance(r, Embedded) else skipped).append(r)  # type: ignore[arg-type]
    return sorted(done, key=lambda r: r.index), sorted(skipped, key=lambda r: r.index)


def write_features(out: str | Path, results: Sequence[Embedded], skipped: Sequence[Skipped], *,
                   backbone: Backbone, image: ImageConfig) -> Path:
    """Save tokens as .npz (atomically).

    Keys: paths (n,), cls (n, d), grid (n, 2) as (h, w), size (n, 2) as original (w, h),
    patches (sum h*w, d) for all images concatenated, offsets (n+1,) so that image i's
    patches are patches[offsets[i]:offsets[i+1]] reshaped to (h, w, d); plus model,
    weights_id, input_size, skipped_paths, skipped_reasons.
    """
    if not results:
        raise RetrievalError("no image could be embedded, so no feature file was written")
    out = Path(out)
    counts = [r.patches.shape[0] for r in results]
    arrays = dict(
        paths=np.array([r.path for r in results]),
        cls=np.stack([r.cls for r in results]).astype(np.float32),
        grid=np.array([r.grid for r in results], np.int32),
        size=np.array([r.size for r in results], np.int32),
        patches=np.concatenate([r.patches for r in results]).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        model=np.array(backbone.name),
        weights_id=np.array(backbone.weights_id),
        input_size=np.array(image.size),
        skipped_paths=np.array([s.path for s in skipped], dtype=str),
        skipped_reasons=np.array([s.reason for s in skipped], dtype=str),
    )
    return _atomic_write(out, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def pca_picture(
    paths: Sequence[str | Path], *, backbone: Backbone, image: ImageConfig, threshold: float = 0.5,
    workers: int | None = None,
) -> tuple[Image.Image, list[Skipped]]:
    """The DINOv2 PCA visualisation over all `paths` (see visualize.pca_rgb), one row per image."""
    done, skipped = embed_all(paths, backbone=backbone, image=image, workers=workers)
    if not done:
        raise RetrievalError("no image could be loaded, so there is nothing to draw")
    maps = visualize.pca_rgb([r.patches for r in done], [r.grid for r in done], threshold=threshold)
    pictures = [images.load_image(r.path, max_pixels=image.max_pixels, min_side_hint=image.size) for r in done]
    return visualize.pca_panel(pictures, maps), skipped


def save_png(picture: Image.Image, out: str | Path) -> Path:
    """Write a PNG atomically."""
    return _atomic_write(out, lambda f: picture.save(f, format="PNG"))


def _atomic_write(out: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write through `write(file)` to a temporary file beside `out`, then os.replace it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def expand_inputs(items: Iterable[str | Path]) -> list[str]:
    """Files as given; folders expanded to the files inside with an image extension (sorted, recursive)."""
    exts = set(images.IMAGE_EXTENSIONS)
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in exts)
        else:
            out.append(str(p))
    return out

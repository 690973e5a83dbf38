"""Sizes and model inputs: the patch-multiple shape of a picture, crops, resizing, normalising."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DEFAULT_MAX_PIXELS
from ..types import Box
from .decoding import decode
from .scope import pixel_limit

def target_size(width: int, height: int, *, size: int, patch_size: int) -> tuple[int, int]:
    """(w, h) with the longer side `size` (rounded to the nearest patch multiple, as `scaled_size` does on the
    engine's paths), aspect kept, both multiples of the patch."""
    if size < patch_size:
        raise ValueError(f"size {size} is smaller than the patch size {patch_size}")
    longer = scaled_size(size, 1.0, patch_size)
    scale = longer / max(width, height)

    def snap(v: int) -> int:
        return max(patch_size, int(round(v * scale / patch_size)) * patch_size)

    return (longer, snap(height)) if width >= height else (snap(width), longer)


def resize_for_model(im: Image.Image, *, size: int, patch_size: int, like: tuple[int, int] | None = None) -> Image.Image:
    """Resize (bicubic, antialiased) so the longer side is `size`; no crop.

    like: the (w, h) whose aspect sets the shape, when `im` was decoded at a reduced DCT scale
    (whose rounded-up sides can shift the aspect across a patch boundary): the full picture's, so
    every decoder gives a file the same input shape.
    """
    w, h = target_size(*(like or im.size), size=size, patch_size=patch_size)
    if (w, h) == im.size:
        return im
    return im.resize((w, h), Image.Resampling.BICUBIC)


def normalize(im: Image.Image, *, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB image -> float32 array (3, H, W) normalised with the backbone's mean/std."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    out = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def crop_pixels(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixels (left, top, right, bottom) a box crops from an image of size (w, h): clamped to
    the image, edges rounded outwards; raises ValueError if that leaves no pixel."""
    x1, y1, x2, y2 = box
    x1, x2 = max(0.0, min(x1, x2)), min(float(size[0]), max(x1, x2))
    y1, y2 = max(0.0, min(y1, y2)), min(float(size[1]), max(y1, y2))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ValueError(f"box {box} leaves no pixels inside the {size[0]}x{size[1]} image")
    return int(math.floor(x1)), int(math.floor(y1)), int(math.ceil(x2)), int(math.ceil(y2))


def crop_box(im: Image.Image, box: Box) -> Image.Image:
    """Crop to (x1, y1, x2, y2) in image pixels (crop_pixels); raises ValueError if empty."""
    return im.crop(crop_pixels(box, im.size))


def prepare(
    im: Image.Image,
    *,
    size: int,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    box: Box | None = None,
    like: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decoded RGB image -> model input (3, H, W) float32: optional crop, resize, normalise.
    like: see resize_for_model (ignored with a box: the crop's own aspect counts)."""
    if box is not None:
        im, like = crop_box(im, box), None
    return normalize(resize_for_model(im, size=size, patch_size=patch_size, like=like), mean=mean, std=std)


def scaled_size(size: int, scale: float, patch_size: int) -> int:
    """Longer side for one scale of a multi-scale pass: size x scale rounded to a patch multiple."""
    return max(patch_size, int(round(size * scale / patch_size)) * patch_size)


def model_pixels(im: Image.Image, *, size: int, patch_size: int, like: tuple[int, int] | None = None) -> np.ndarray:
    """Decoded image -> the model's input pixels: uint8 (H, W, 3), resized as `resize_for_model`.

    The engine normalises them where the model runs; `normalize` is the same arithmetic in numpy.
    """
    return np.array(resize_for_model(im, size=size, patch_size=patch_size, like=like).convert("RGB"), dtype=np.uint8)


def preprocess(
    path: str | Path,
    *,
    size: int,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    box: tuple[float, float, float, float] | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Load, (crop), resize and normalise one file. Returns (x (3, H, W) float32, original (w, h))."""
    with pixel_limit(max_pixels):
        im, original = decode(path, max_pixels=max_pixels, min_side_hint=None if box is not None else size)
    return prepare(im, size=size, patch_size=patch_size, mean=mean, std=std, box=box, like=original), original

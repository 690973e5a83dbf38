"""Files read once for the model: bytes hashed, then decoded and prepared at each size, or (for
the GPU decoder) a plain JPEG left encoded. Runs in decoder threads or worker processes."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DEFAULT_MAX_PIXELS, ImageConfig
from ..errors import BadImageError
from ..types import Box
from .decoding import _check_header, _refuse_raw, _regular_file_size, decode
from .geometry import crop_box, model_pixels, scaled_size, target_size

@dataclass(frozen=True)
class PreparedFile:
    """A file read once: uint8 model pixels (H, W, 3) at each size, original upright (w, h), sha256, bytes."""

    pixels: tuple[np.ndarray, ...]
    original_wh: tuple[int, int]
    sha256: str
    nbytes: int


@dataclass(frozen=True)
class EncodedJpeg:
    """A plain 8-bit JPEG left encoded, for a batched decode on the GPU: its bytes, EXIF orientation
    (1-8), the model input size (w, h) at each scale, original upright (w, h), sha256, bytes."""

    data: bytes
    orientation: int
    targets: tuple[tuple[int, int], ...]
    original_wh: tuple[int, int]
    sha256: str
    nbytes: int


_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees


def read_file(path: str, *, sizes: tuple[int, ...], patch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
              keep_jpeg: bool = False, draft: bool = True,
              box: Box | None = None) -> PreparedFile | EncodedJpeg:
    """Read a file once and hash those bytes; then decode and prepare it (`prepare_bytes`), or, with
    `keep_jpeg`, leave a plain 8-bit RGB or grey JPEG that ends cleanly encoded for the GPU decoder
    (its header checked here exactly as `decode` checks it). Anything else (CMYK, MPO, truncated
    files, other formats) is decoded here, so the errors users see never depend on the decoder.

    Runs in decoder worker processes (this package imports neither torch nor the engine) or
    threads, under a pixel_limit the caller holds. draft: see `prepare_bytes`. With `box`, the
    picture is cropped to it first (see prepare_bytes). Raises BadImageError.
    """
    _refuse_raw(path)  # before reading: a RAW file is 20-80 MB
    _regular_file_size(path)  # before opening: a FIFO would wait for a writer, /dev/zero never ends
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImageError.unreadable(path, e) from e
    digest = hashlib.sha256(data).hexdigest()
    if keep_jpeg and box is None:
        encoded = _plain_jpeg(path, data, sizes=sizes, patch_size=patch_size, max_pixels=max_pixels, digest=digest)
        if encoded is not None:
            return encoded
    return prepare_bytes(path, data, sizes=sizes, patch_size=patch_size, max_pixels=max_pixels, digest=digest,
                         draft=draft, box=box)


def read_bytes(name: str, data: bytes, *, sizes: tuple[int, ...], patch_size: int,
               max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True, box: Box | None = None) -> PreparedFile:
    """`read_file` for bytes already in memory (an upload): hashed, decoded and prepared once, with
    no file written or read; `name` stands for the file in errors. Raises BadImageError."""
    return prepare_bytes(name, data, sizes=sizes, patch_size=patch_size, max_pixels=max_pixels,
                         digest=hashlib.sha256(data).hexdigest(), draft=draft, box=box)


def model_reader(image: ImageConfig, *, scales: Sequence[float], patch_size: int, keep_jpeg: bool = False,
                 draft: bool = True, box: Box | None = None) -> Callable[[str], PreparedFile | EncodedJpeg]:
    """The one way a file is read for the model: `read(path)` gives its uint8 pixels at each scale
    of `image.size` (read_file; BadImageError for a refused file), to be called under a
    pixel_limit scope. A partial of a module-level function of a package without torch, so decoder
    processes, and Ray's decode tasks (engine/distributed.py), start light."""
    sizes = tuple(scaled_size(image.size, s, patch_size) for s in scales)
    return partial(read_file, sizes=sizes, patch_size=patch_size, max_pixels=image.max_pixels, keep_jpeg=keep_jpeg,
                   draft=draft, box=box)


def prepare_bytes(path: str, data: bytes, *, sizes: tuple[int, ...], patch_size: int,
                  digest: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                  draft: bool = True, box: Box | None = None) -> PreparedFile:
    """Decode a file's bytes (whose sha256 is `digest`) and prepare the model pixels at each size.
    draft: a JPEG is decoded at the smallest DCT scale that still covers the largest size (fast,
    close to the full decode); False decodes it in full (see `load_image`). With `box` (x1, y1,
    x2, y2 in pixels of the upright picture), the pixels are those of that crop of the full-size
    decode. Raises BadImageError."""
    im, original = decode(path, data=data, max_pixels=max_pixels,
                          min_side_hint=max(sizes) if draft and box is None else None)
    like: tuple[int, int] | None = original
    if box is not None:
        try:
            im, like = crop_box(im, box), None
        except ValueError as e:
            raise BadImageError(path, str(e), fix="give a box inside the image (bbox, --bbox)") from e
    pixels = tuple(model_pixels(im, size=s, patch_size=patch_size, like=like) for s in sizes)
    return PreparedFile(pixels, original, digest, len(data))


def _plain_jpeg(path: str, data: bytes, *, sizes: tuple[int, ...], patch_size: int, max_pixels: int,
                digest: str) -> EncodedJpeg | None:
    """An EncodedJpeg if `data` is a JPEG the GPU decoder handles exactly like Pillow, else None."""
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or truncated / trailing data: Pillow decides what to do with it
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            _check_header(Path(path), im, max_pixels)
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # corrupt EXIF counts as upright, as in _exif_upright
                orientation = 1
            w, h = im.size
    except BadImageError:
        raise
    except Exception:  # anything odd about the header: let the full decode produce the error
        return None
    if type(orientation) is not int or orientation not in range(1, 9):
        orientation = 1  # what exif_transpose does with a value it does not know (a string "6", say)
    if orientation in _SWAPS_SIDES:
        w, h = h, w
    targets = tuple(target_size(w, h, size=s, patch_size=patch_size) for s in sizes)
    return EncodedJpeg(data, orientation, targets, (w, h), digest, len(data))

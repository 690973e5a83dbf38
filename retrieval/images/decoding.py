"""Any image file a user may have -> an upright 8-bit RGB picture, or a BadImageError that names
the file, the reason and the fix. Which formats are allowed, and why, is decided here."""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import DEFAULT_MAX_PIXELS
from ..errors import BadImageError
from ..types import file_kind
from .scope import pixel_limit

# Formats decoded and indexed. PSD is left out on purpose: a layered document's "merged"
# picture may be missing or stale, so a result from it would mislead.
ALLOWED_FORMATS = frozenset(
    {"JPEG", "MPO", "PNG", "GIF", "WEBP", "TIFF", "BMP", "DIB", "HEIF", "AVIF", "JPEG2000", "PPM", "TGA"}
)


# Camera RAW files. Listed so that a scan reports them as refused, with the fix, instead of
# ignoring them: they are not decoded (demosaicing is a raw converter's job, and the picture a
# photographer means is the developed export that usually sits beside the RAW file).
RAW_EXTENSIONS = frozenset(
    {".nef", ".nrw", ".dng", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef",
     ".srw", ".raw", ".rwl", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq", ".mos", ".dcr"}
)


# File name endings worth opening when a folder is scanned (content decides what they are).
# PSD is listed so that users learn why it is refused rather than finding it silently ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".dib",
     ".heic", ".heif", ".hif", ".avif", ".avifs", ".jp2", ".j2k", ".jpf", ".jpx", ".mpo", ".ppm", ".pgm",
     ".pbm", ".pnm", ".tga", ".psd"} | RAW_EXTENSIONS
)


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


_WHITE = (255, 255, 255)


_TIFF_UNDECODABLE = frozenset({"webp"})  # compressions the libtiff in Pillow's wheels lacks (probed)


def register_heif() -> bool:
    """Let Pillow open HEIC/HEIF (and AVIF where Pillow lacks it). Safe to call repeatedly."""
    try:
        import pillow_heif
    except ImportError:  # pragma: no cover - pillow-heif is a hard dependency
        return False
    pillow_heif.register_heif_opener()
    return True


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side_hint: int | None = None,
) -> Image.Image:
    """Open `path` by content and return an upright RGB image.

    EXIF orientation is applied once (libtiff already applies TIFF orientation itself); any
    mode becomes RGB with alpha composited over white; 16-bit and float data are stretched
    to the full 8-bit range. With `min_side_hint`, JPEGs are decoded at a reduced DCT scale
    (a draft) whose longer side stays at least that many pixels: several times faster on large
    photos, but after resizing the pixels are close to a full decode's, not equal (up to about
    50/255, mean about 2; docs/images.md). None decodes in full, as the official transform does.

    Raises BadImageError naming the file, the reason and the fix.
    """
    with pixel_limit(max_pixels):
        return decode(path, max_pixels=max_pixels, min_side_hint=min_side_hint)[0]


def decode(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side_hint: int | None = None,
    data: bytes | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Like `load_image`, also returning the upright (width, height) of the full-size original.

    With `data`, the file's bytes already read by the caller are decoded (`path` names it in errors).
    The caller holds `pixel_limit` (see there): `load_image` does, the engine holds it around its readers.
    """
    path = Path(path)
    _refuse_raw(path)
    nbytes = _regular_file_size(path) if data is None else len(data)
    if nbytes == 0:
        raise BadImageError(path, "empty file (0 bytes)", fix="re-copy it from its source or delete it")
    register_heif()
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            _check_header(path, im, max_pixels)
            full = im.size
            if min_side_hint is not None and im.format == "JPEG":
                _draft(im, min_side_hint)
            im.load()
            decoded = im.size
            upright = _exif_upright(im)
            if upright.size != decoded:  # a 90-degree EXIF rotation swapped the sides
                full = (full[1], full[0])
            return to_rgb(upright), full
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"decompression bomb ({e})",
                            fix="leave it out, or raise the pixel limit (max_pixels, --max-pixels) if it is "
                                "genuine") from e
    except UnidentifiedImageError as e:
        raise BadImageError(path, "not a recognised image (unknown format, corrupt header or not an image at all)") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        reason = str(e) or type(e).__name__
        reason = f"file is truncated ({reason})" if "truncated" in reason else f"cannot decode: {reason}"
        raise BadImageError(path, reason) from e


def _refuse_raw(path: str | Path) -> None:
    suffix = Path(path).suffix.lower()
    if suffix in RAW_EXTENSIONS:
        raise BadImageError(path, f"camera RAW files ({suffix}) are not decoded",
                            fix="index the JPEG or TIFF that your raw converter exports from it")


def _regular_file_size(path: str | Path) -> int:
    """The size of `path`, which must be a regular file: a folder, FIFO or device is refused before
    it is opened (opening a FIFO waits for a writer; reading /dev/zero never ends)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadImageError.unreadable(path, e) from e
    if not stat.S_ISREG(st.st_mode):
        raise BadImageError(path, f"not a regular file ({file_kind(st.st_mode)})", fix="pass an image file")
    return st.st_size


def _check_header(path: Path, im: Image.Image, max_pixels: int) -> None:
    if im.format not in ALLOWED_FORMATS:
        raise BadImageError(
            path, f"{im.format} files are not supported", fix="export a flattened JPEG or PNG"
        )
    if im.format == "TIFF" and im.info.get("compression") in _TIFF_UNDECODABLE:
        # refused from the header: libtiff would print its own complaint about a temporary file
        # name in the middle of the progress bar before failing
        raise BadImageError(path, f"TIFF with {im.info['compression']} compression, which this build's libtiff "
                                  f"cannot decode", fix="re-save it as TIFF with LZW or Deflate, or as PNG or JPEG")
    w, h = im.size
    if w < 1 or h < 1:
        raise BadImageError(path, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise BadImageError(
            path,
            f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the pixel budget of {max_pixels / 1e6:.0f} MP",
            fix="downscale it, or raise the budget (max_pixels, --max-pixels)",
        )


def _draft(im: Image.Image, min_side: int) -> None:
    """Ask libjpeg for a DCT-scaled decode that keeps the longer side >= min_side."""
    w, h = im.size
    scale = min_side / max(w, h)
    if scale < 1:
        im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))


def _exif_upright(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a corrupt or invalid orientation counts as upright."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # corrupt EXIF must never make a good picture unusable
        return im
    return im if out is None else out


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency composited over white."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _WIDE_MODES:
        return _wide_to_rgb(im)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _wide_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float samples: stretch min..max to 0..255 (never clip)."""
    a = np.asarray(im, dtype=np.float64)
    finite = np.isfinite(a)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
    scaled = np.zeros(a.shape, np.uint8)
    if hi > lo:
        stretched = (np.where(finite, a, lo) - lo) * (255.0 / (hi - lo))
        scaled = np.clip(np.round(stretched), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(scaled, mode="L").convert("RGB")
    key = im.info.get("transparency")
    if isinstance(key, int):
        rgb.paste(_WHITE, mask=Image.fromarray((np.asarray(im) == key).astype(np.uint8) * 255, mode="L"))
    return rgb

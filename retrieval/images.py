"""Decode any image file a user may have into an upright RGB picture, then into a model input.

Every failure becomes a `BadImageError` that names the file, the reason and the fix. Nothing
here touches global Pillow settings outside a scoped context manager.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_PIXELS
from .errors import BadImageError

log = logging.getLogger(__name__)

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
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the upright picture
DECODER_THREADS = "retrieval-decode"  # name prefix of the engine's decoder threads (see pixel_limit)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_WHITE = (255, 255, 255)


def worker_init() -> None:  # pragma: no cover - runs in decoder worker processes
    """Initialiser of decoder processes. It lives here, not in the engine, because a spawned
    worker imports the initialiser's module: from the engine that would load torch in every one
    (seconds each, and far more memory; docs/throughput.md)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, between batches


def register_heif() -> bool:
    """Let Pillow open HEIC/HEIF (and AVIF where Pillow lacks it). Safe to call repeatedly."""
    try:
        import pillow_heif
    except ImportError:  # pragma: no cover - pillow-heif is a hard dependency
        return False
    pillow_heif.register_heif_opener()
    return True


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Scoped Pillow bomb limit: our own check rejects above `max_pixels`; Pillow only guards far above.

    It changes process-wide state (Pillow's limit, how warnings are shown), so threads that decode
    at once must share one scope entered around all of them, and call the functions here with
    scoped=False. While it lasts, warnings raised by Pillow, by this module or in decoder threads
    go to the debug log (corrupt EXIF, odd MPO headers: not the user's problem); others pass through.
    On exit it undoes only its own changes, so a scope that outlives others (a stream's, left to
    the garbage collector) cannot reset settings made since.
    """
    previous_limit, previous_show = Image.MAX_IMAGE_PIXELS, warnings.showwarning
    limit = Image.MAX_IMAGE_PIXELS = max(max_pixels, DEFAULT_MAX_PIXELS)
    active = [True]

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if not (active[0] and _decoder_chatter(filename)):  # transparent once the scope is over
            previous_show(message, category, filename, lineno, file, line)
        elif not issubclass(category, (Image.DecompressionBombWarning, ResourceWarning)):
            log.debug("%s (%s:%d)", message, filename, lineno)

    warnings.showwarning = show
    try:
        yield
    finally:
        active[0] = False
        if warnings.showwarning is show:
            warnings.showwarning = previous_show
        if Image.MAX_IMAGE_PIXELS == limit:
            Image.MAX_IMAGE_PIXELS = previous_limit


def _decoder_chatter(filename: str) -> bool:
    """A warning raised in a decoder thread, by Pillow (or pillow-heif) or by this module."""
    if threading.current_thread().name.startswith(DECODER_THREADS):
        return True
    here = Path(filename).resolve()
    if here == Path(__file__).resolve():
        return True
    import PIL

    roots = [Path(PIL.__file__).resolve().parent]
    with contextlib.suppress(ImportError):
        import pillow_heif

        roots.append(Path(pillow_heif.__file__).resolve().parent)
    return any(root in here.parents for root in roots)


def _limit(max_pixels: int, scoped: bool) -> contextlib.AbstractContextManager[None]:
    return pixel_limit(max_pixels) if scoped else contextlib.nullcontext()


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
    return decode(path, max_pixels=max_pixels, min_side_hint=min_side_hint)[0]


def decode(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side_hint: int | None = None,
    data: bytes | None = None,
    scoped: bool = True,
) -> tuple[Image.Image, tuple[int, int]]:
    """Like `load_image`, also returning the upright (width, height) of the full-size original.

    With `data`, the file's bytes already read by the caller are decoded (`path` names it in errors).
    scoped=False: the caller holds `pixel_limit` (see there).
    """
    path = Path(path)
    _refuse_raw(path)
    if data is None:
        try:
            nbytes = path.stat().st_size
        except OSError as e:
            raise BadImageError(path, f"cannot read the file ({e.strerror or e})",
                                fix="check the path and permissions") from e
    else:
        nbytes = len(data)
    if nbytes == 0:
        raise BadImageError(path, "empty file (0 bytes)", fix="re-copy it from its source or delete it")
    register_heif()
    try:
        with _limit(max_pixels, scoped), Image.open(path if data is None else io.BytesIO(data)) as im:
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
                            fix="leave it out, or raise --max-pixels if it is genuine") from e
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
            fix="downscale it, or raise the budget (--max-pixels)",
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


def crop_box(im: Image.Image, box: Box) -> Image.Image:
    """Crop to (x1, y1, x2, y2) in image pixels, clamped to the image; raises ValueError if empty."""
    x1, y1, x2, y2 = box
    x1, x2 = max(0.0, min(x1, x2)), min(float(im.width), max(x1, x2))
    y1, y2 = max(0.0, min(y1, y2)), min(float(im.height), max(y1, y2))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ValueError(f"box {box} leaves no pixels inside the {im.width}x{im.height} image")
    return im.crop((int(math.floor(x1)), int(math.floor(y1)), int(math.ceil(x2)), int(math.ceil(y2))))


def prepare(
    im: Image.Image,
    *,
    size: int,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    box: tuple[float, float, float, float] | None = None,
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
    im, original = decode(path, max_pixels=max_pixels, min_side_hint=None if box is not None else size)
    return prepare(im, size=size, patch_size=patch_size, mean=mean, std=std, box=box, like=original), original


def model_pixels(im: Image.Image, *, size: int, patch_size: int, like: tuple[int, int] | None = None) -> np.ndarray:
    """Decoded image -> the model's input pixels: uint8 (H, W, 3), resized as `resize_for_model`.

    The engine normalises them where the model runs; `normalize` is the same arithmetic in numpy.
    """
    return np.array(resize_for_model(im, size=size, patch_size=patch_size, like=like).convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class PreparedFile:
    """A file read once: uint8 model pixels (H, W, 3) at each size, original upright (w, h), sha256, bytes."""

    pixels: tuple[np.ndarray, ...]
    size: tuple[int, int]
    sha256: str
    nbytes: int


@dataclass(frozen=True)
class EncodedJpeg:
    """A plain 8-bit JPEG left encoded, for a batched decode on the GPU: its bytes, EXIF orientation
    (1-8), the model input size (w, h) at each scale, original upright (w, h), sha256, bytes."""

    data: bytes
    orientation: int
    targets: tuple[tuple[int, int], ...]
    size: tuple[int, int]
    sha256: str
    nbytes: int


_TIFF_UNDECODABLE = frozenset({"webp"})  # compressions the libtiff in Pillow's wheels lacks (probed)
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees


def read_file(path: str, *, sizes: tuple[int, ...], patch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
              keep_jpeg: bool = False, scoped: bool = True, draft: bool = True,
              box: Box | None = None) -> PreparedFile | EncodedJpeg:
    """Read a file once and hash those bytes; then decode and prepare it (`prepare_bytes`), or, with
    `keep_jpeg`, leave a plain 8-bit RGB or grey JPEG that ends cleanly encoded for the GPU decoder
    (its header checked here exactly as `decode` checks it). Anything else (CMYK, MPO, truncated
    files, other formats) is decoded here, so the errors users see never depend on the decoder.

    Runs in decoder worker processes (this module imports neither torch nor the engine) or
    threads (scoped=False, under one pixel_limit). draft: see `prepare_bytes`. With `box`, the
    picture is cropped to it first (see prepare_bytes). Raises BadImageError.
    """
    _refuse_raw(path)  # before reading: a RAW file is 20-80 MB
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImageError(path, f"cannot read the file ({e.strerror or e})", fix="check the path and permissions") from e
    digest = hashlib.sha256(data).hexdigest()
    if keep_jpeg and box is None:
        encoded = _plain_jpeg(path, data, sizes=sizes, patch_size=patch_size, max_pixels=max_pixels, digest=digest,
                              scoped=scoped)
        if encoded is not None:
            return encoded
    return prepare_bytes(path, data, sizes=sizes, patch_size=patch_size, max_pixels=max_pixels, digest=digest,
                         scoped=scoped, draft=draft, box=box)


def prepare_bytes(path: str, data: bytes, *, sizes: tuple[int, ...], patch_size: int,
                  digest: str, max_pixels: int = DEFAULT_MAX_PIXELS, scoped: bool = True,
                  draft: bool = True, box: Box | None = None) -> PreparedFile:
    """Decode a file's bytes (whose sha256 is `digest`) and prepare the model pixels at each size.
    draft: a JPEG is decoded at the smallest DCT scale that still covers the largest size (fast,
    close to the full decode); False decodes it in full (see `load_image`). With `box` (x1, y1,
    x2, y2 in pixels of the upright picture), the pixels are those of that crop of the full-size
    decode. Raises BadImageError."""
    im, original = decode(path, data=data, max_pixels=max_pixels,
                          min_side_hint=max(sizes) if draft and box is None else None, scoped=scoped)
    like: tuple[int, int] | None = original
    if box is not None:
        try:
            im, like = crop_box(im, box), None
        except ValueError as e:
            raise BadImageError(path, str(e), fix="pass a --bbox inside the image") from e
    pixels = tuple(model_pixels(im, size=s, patch_size=patch_size, like=like) for s in sizes)
    return PreparedFile(pixels, original, digest, len(data))


def _plain_jpeg(path: str, data: bytes, *, sizes: tuple[int, ...], patch_size: int, max_pixels: int,
                digest: str, scoped: bool) -> EncodedJpeg | None:
    """An EncodedJpeg if `data` is a JPEG the GPU decoder handles exactly like Pillow, else None."""
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or truncated / trailing data: Pillow decides what to do with it
    try:
        with _limit(max_pixels, scoped), Image.open(io.BytesIO(data)) as im:
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

"""Research outputs: raw tokens to .npz (`retrieve extract`) and the PCA picture (`retrieve pca`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import images, pca_maps
from ..backbone import Backbone, load_backbone
from ..config import BackboneConfig, ImageConfig
from ..errors import RetrievalError
from .forward import ForwardBatch, Skipped, decoded_stream, forward_batches, jpeg_device
from .files import atomic_write


def open_backbone(cfg: BackboneConfig) -> Backbone:
    return load_backbone(cfg.name, weights=cfg.weights, device=cfg.device, dtype=cfg.dtype)


@dataclass(frozen=True)
class FileTokens:
    """Tokens of one image. cls: (d,); patches: (h*w, d); grid (h, w); size: original (w, h);
    registers: (r, d), its register (DINOv2) or storage (DINOv3) tokens, r = 0 for a model without."""

    index: int
    path: str
    cls: np.ndarray
    patches: np.ndarray
    grid: tuple[int, int]
    original_wh: tuple[int, int]
    registers: np.ndarray


def embed(paths: Sequence[str | Path], *, backbone: Backbone, image: ImageConfig, batch: int = 16,
          workers: int | None = None, decode: str = "cpu", draft: bool = True) -> Iterator[FileTokens | Skipped]:
    """Tokens of each file at one scale, as batches complete (not in input order).

    Every input yields exactly one FileTokens or Skipped. `decode`: see embedding.jpeg_device; Pillow
    by default, so research outputs are the same on every machine. `draft`: large JPEGs decoded at a
    reduced DCT scale, as `retrieve index` does (fast, close); False decodes them in full, so the
    tokens are those of the official transform (`retrieve extract`'s default; docs/features.md).
    """
    stream = decoded_stream([str(p) for p in paths], backbone=backbone, image=image, workers=workers,
                            jpegs_on=jpeg_device(decode, backbone.device), jpegs_per_decode=batch, draft=draft)
    for out in forward_batches(stream, backbone=backbone, batch=batch):
        if isinstance(out, Skipped):
            yield out
            continue
        cls = out.tokens.cls.cpu().numpy()
        patches = out.tokens.patches.cpu().numpy()
        regs = out.tokens.registers
        registers = regs.cpu().numpy() if regs is not None else np.zeros((len(cls), 0, cls.shape[1]), np.float32)
        for j, (d, _) in enumerate(out.items):
            yield FileTokens(d.index, d.path, cls[j], patches[j], out.tokens.grid, d.original_wh, registers[j])


def embed_all(paths: Sequence[str | Path], *, on_result: Callable[[FileTokens | Skipped], None] | None = None,
              **kwargs: object) -> tuple[list[FileTokens], list[Skipped]]:
    """`embed`, collected and put back in input order; `on_result` sees each result as it comes."""
    done: list[FileTokens] = []
    skipped: list[Skipped] = []
    for r in embed(paths, **kwargs):  # type: ignore[arg-type]
        if on_result is not None:
            on_result(r)
        if isinstance(r, FileTokens):
            done.append(r)
        else:
            skipped.append(r)
    return sorted(done, key=lambda r: r.index), sorted(skipped, key=lambda r: r.index)


def write_features(out: str | Path, results: Sequence[FileTokens], skipped: Sequence[Skipped], *,
                   backbone: Backbone, image: ImageConfig, draft: bool) -> Path:
    """Save tokens as .npz (atomically); keys in docs/features.md. `draft`: how `results` were
    decoded (see `embed`), recorded as the key `decode`."""
    if not results:
        raise RetrievalError("no image could be embedded, so no feature file was written")
    counts = [r.patches.shape[0] for r in results]
    arrays = dict(
        paths=np.array([r.path for r in results]),
        cls=np.stack([r.cls for r in results]).astype(np.float32),
        grid=np.array([r.grid for r in results], np.int32),
        size=np.array([r.original_wh for r in results], np.int32),
        patches=np.concatenate([r.patches for r in results]).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        **{register_key(backbone): np.stack([r.registers for r in results]).astype(np.float32)},
        model=np.array(backbone.name),
        weights_id=np.array(backbone.weights_id),
        input_size=np.array(image.size),
        decode=np.array("draft" if draft else "exact"),
        skipped_paths=np.array([s.path for s in skipped], dtype=str),
        skipped_reasons=np.array([s.reason for s in skipped], dtype=str),
    )
    return atomic_write(out, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def register_key(backbone: Backbone) -> str:
    """The .npz key of the tokens between the class token and the patches: `storage` for DINOv3
    (Meta's name for them), `registers` for DINOv2 (none but in the `_reg` models)."""
    return "storage" if backbone.arch.family == "dinov3" else "registers"


def pca_picture(paths: Sequence[str | Path], *, backbone: Backbone, image: ImageConfig, threshold: float = 0.5,
                workers: int | None = None) -> tuple[Image.Image, list[Skipped]]:
    """The DINOv2 PCA visualisation over all `paths` (see pca_maps.pca_rgb), one row per image."""
    done, skipped = embed_all(paths, backbone=backbone, image=image, workers=workers)
    if not done:
        raise RetrievalError("no image could be loaded, so there is nothing to draw")
    maps = pca_maps.pca_rgb([r.patches for r in done], [r.grid for r in done], threshold=threshold)
    pictures = [images.load_image(r.path, max_pixels=image.max_pixels, min_side_hint=image.size) for r in done]
    return pca_maps.pca_panel(pictures, maps), skipped


def save_png(picture: Image.Image, out: str | Path) -> Path:
    """Write a PNG atomically."""
    return atomic_write(out, lambda f: picture.save(f, format="PNG"))


__all__ = ["ForwardBatch", "FileTokens", "open_backbone", "embed", "embed_all", "pca_picture", "register_key", "save_png", "write_features"]

"""Batched JPEG decoding where the model runs (nvJPEG on CUDA, through torchvision), then EXIF
orientation and the model resize on the same device.

The CPU path (`images`) decodes with Pillow at a reduced DCT scale and resizes with Pillow's
antialiased bicubic filter; here the full picture is decoded and resized with torch's antialiased
bicubic filter, which uses Pillow's kernel (a = -0.5). The two differ by JPEG rounding only:
docs/throughput.md gives the measured pixel and descriptor differences.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def available(device: torch.device) -> bool:
    """Whether JPEGs can be decoded on `device`: a CUDA device where torchvision's nvJPEG decoder
    decodes a tiny JPEG (a torchvision built without nvJPEG would refuse every batch)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import encode_jpeg

        probe = encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decode([bytes(probe.numpy())], device)[0] is not None
    except (ImportError, RuntimeError):  # pragma: no cover - needs a CUDA machine without nvJPEG
        return False


def decode(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """JPEG files' bytes -> RGB uint8 tensors (3, H, W) on `device`, in one batched call; None
    for each file the decoder there refuses (arithmetic coding, say), for the caller to decode elsewhere."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        # torchvision writes the pictures on its own stream without waiting for ours: memory it
        # is handed may still be read by kernels queued on ours (the previous batch's resizes)
        torch.cuda.current_stream(device).synchronize()
    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its decoders deprecated (TorchCodec)
        try:
            return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one refused file fails the whole batch: find it
            if len(raw) == 1:
                return [None]
        out: list[torch.Tensor | None] = []
        for r in raw:
            try:
                out.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def upright(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a (C, H, W) tensor, as Pillow's ImageOps.exif_transpose does."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w) for size (w, h): antialiased bicubic, rounded as Pillow rounds."""
    w, h = size
    if tuple(x.shape[-2:]) == (h, w):
        return x.contiguous()
    y = F.interpolate(x[None].float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)

"""A DINOv2 or DINOv3 backbone (our own ViTs, vit.py and vit3.py) whose tokens match the official
implementations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import MutableMapping
from pathlib import Path

import torch

from ..errors import RetrievalError, UnknownBackboneError, UsageError, WeightsError
from ..types import TokenBatch
from . import weights as W
from .onednn import use_onednn
from .registry import IMAGENET_MEAN, IMAGENET_STD, Arch, registry
from .vit import TEST_TINY_WEIGHTS, VisionTransformer, build_vit, interpolate_pos_embed
from .vit3 import TEST_TINY_V3_WEIGHTS, VisionTransformer3, build_vit3

__all__ = ["Backbone", "backbone_names", "ensure_weights", "interpolate_pos_embed", "load_backbone", "native_dtype",
           "resolve_device", "resolve_dtype", "weights_id"]

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class Backbone(torch.nn.Module):
    """`encode(x)` -> TokenBatch (cls, patches, grid) after the final norm.

    Attributes: name, dim, patch_size, mean, std, num_registers, device, dtype, weights_id,
    linear_kernels ("onednn" when fp32 CPU linear layers run through oneDNN, else "default").
    """

    def __init__(self, arch: Arch, vit: VisionTransformer | VisionTransformer3, *, device: torch.device,
                 dtype: torch.dtype, weights_id: str, onednn: bool = True) -> None:
        super().__init__()
        self.arch = arch
        self.vit = vit.eval().to(device)
        # fp32 on the CPU: linear layers through oneDNN, up to 2x faster (onednn.py)
        fast = onednn and device.type == "cpu" and dtype == torch.float32 and use_onednn(self.vit) > 0
        self.linear_kernels = "onednn" if fast else "default"
        self.device = device
        self.dtype = dtype
        self.weights_id = weights_id
        self.name = arch.name
        self.dim = arch.dim
        self.patch_size = arch.patch_size
        self.num_registers = arch.num_registers
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD


    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> TokenBatch:
        """x: normalised float `(n, 3, H, W)`, H and W multiples of the patch size (14 for DINOv2).
        DINOv3 takes any H, W of at least 16, as Meta's code does: its patch convolution drops
        the last H % 16 rows and W % 16 columns, and `grid` counts the patches it made."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float tensor (n, 3, H, W), got shape {tuple(x.shape)}")
        _, _, height, width = x.shape
        v3 = isinstance(self.vit, VisionTransformer3)
        ragged = not v3 and (height % self.patch_size or width % self.patch_size)
        if ragged or height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                f"resize with retrieval.images.resize_for_model"
            )
        x = x.to(self.device, torch.float32, non_blocking=True)
        autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self.dtype != torch.float32:
            autocast = torch.autocast(self.device.type, dtype=self.dtype)
        with autocast:
            if isinstance(self.vit, VisionTransformer3):
                t = self.vit.tokens(x)
            else:
                t = self.vit.tokens(x, antialias=self.arch.antialias_pos)
        t = t.float()
        grid = (height // self.patch_size, width // self.patch_size)
        r = 1 + self.num_registers
        return TokenBatch(cls=t[:, 0], patches=t[:, r:], grid=grid, registers=t[:, 1:r])

    def forward(self, x: torch.Tensor) -> TokenBatch:  # pragma: no cover - alias
        return self.encode(x)


def backbone_names() -> list[str]:
    return list(registry())


def _build_vit(arch: Arch) -> VisionTransformer | VisionTransformer3:
    """A checkpoint's model is built empty ("meta" device) and its weights assigned; only the random
    test models are initialised."""
    if arch.family == "dinov3":
        return build_vit3(arch, init=arch.random_only)
    return build_vit(arch, init=arch.random_only)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None: cuda when present, else cpu. A device that is not here raises RetrievalError naming
    the valid ones."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = "cpu, cuda, cuda:N" if torch.cuda.is_available() else "cpu (no CUDA device here)"
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError):
        raise RetrievalError(f"unknown device {str(device)!r}; valid here: {valid}") from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RetrievalError(f"--device {device}: no CUDA device here (no NVIDIA GPU or driver); use --device cpu "
                                 f"or leave --device out")
        if where.index is not None and where.index >= count:
            raise RetrievalError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                                 f"cuda:{count - 1}")
    elif where.type != "cpu":
        raise RetrievalError(f"--device {device} is not supported; valid here: {valid}")
    return where


def native_dtype(device: torch.device) -> str:
    """"bf16" where the hardware computes it natively (a CUDA GPU with bf16, or an x86 CPU with
    AVX-512 BF16 or AMX), else "fp32". What "auto" means: docs/throughput.md has the measured speed
    and token differences that make bf16 the choice there."""
    if device.type == "cuda":  # native bf16 from compute capability 8.0 (Ampere); older GPUs emulate it
        return "bf16" if torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
    if device.type == "cpu":
        probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        try:
            native = any(p() for p in probes if p is not None)
        except Exception:  # private probes of torch.cpu: a change there must never break loading
            native = False
        return "bf16" if native else "fp32"
    return "fp32"


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype:
    """fp32 / bf16 / fp16, or "auto" (native_dtype of `device`, the CPU when None); None is fp32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype.lower() == "auto":
        dtype = native_dtype(device or torch.device("cpu"))
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise UsageError(f"unknown dtype {dtype!r}; valid: auto, fp32, bf16, fp16") from None


def ensure_weights(name: str, *, weights: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
    """Fail now, before any work, if `name` is unknown or its weights cannot be had: a given file
    must exist; with none, the official checkpoint must be cached or downloadable (it is fetched
    here). Builds no model."""
    archs = registry()
    if name not in archs:
        raise UnknownBackboneError(name, list(archs))
    arch = archs[name]
    if weights is not None and (url := W.as_url(weights)) is not None:
        W.fetch_url(arch, url, cache_dir=cache_dir)
    elif weights is not None:
        if not Path(weights).is_file():
            raise WeightsError(f"weights file not found: {weights}; expected the official {arch.checkpoint_file} "
                                 f"({arch.where}) or a safetensors file of {arch.name}")
    elif not arch.random_only:
        W.fetch_official(arch, cache_dir=cache_dir)


def _random_id(arch: Arch) -> str:
    return TEST_TINY_V3_WEIGHTS if arch.family == "dinov3" else TEST_TINY_WEIGHTS


def _weights_file(name: str, weights: str | Path | None, cache_dir: str | Path | None) -> tuple[Arch, Path | None]:
    """The architecture of `name` and the weights file load_backbone reads: `weights`, else the
    official checkpoint (fetched once into the cache), else None for a random-only test model. An
    http(s) URL is downloaded once into the cache."""
    archs = registry()
    if name not in archs:
        raise UnknownBackboneError(name, list(archs))
    arch = archs[name]
    if weights is not None and (url := W.as_url(weights)) is not None:
        return arch, W.fetch_url(arch, url, cache_dir=cache_dir)
    if weights is not None:
        return arch, Path(weights)
    if arch.random_only:
        return arch, None
    return arch, W.fetch_official(arch, cache_dir=cache_dir)


def weights_id(name: str, *, weights: str | Path | None = None, cache_dir: str | Path | None = None,
               hash_cache: MutableMapping[str, str] | None = None) -> str:
    """The `weights_id` load_backbone(name, weights=...) would give, without building the model:
    what a driver checks against its index before workers load the model themselves."""
    arch, path = _weights_file(name, weights, cache_dir)
    if path is None:
        return _random_id(arch)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; pass the index's weights file with --weights")
    return W.file_id(path, hash_cache)


def load_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    hash_cache: MutableMapping[str, str] | None = None,
    onednn: bool = True,
) -> Backbone:
    """Create a DINOv2 or DINOv3 backbone by short name with official (or local) weights.

    name: one of `backbone_names()`; `test_tiny` (DINOv2) and `test_tiny_v3` are random 2-block ViTs
    for tests.
    weights: a local checkpoint (official `.pth` key layout, or safetensors in timm's or, for DINOv3,
    Hugging Face's layout), or an http(s) URL downloaded once into the torch hub cache; None fetches
    the official DINOv2 checkpoint once into that cache (a clear error when offline). DINOv3's
    files are gated: None finds one only when it is already in the cache under Meta's file name.
    dtype: fp32 (default), or bf16/fp16 run by autocast, or auto (see native_dtype).
    hash_cache: remembers weights-file hashes by (path, size, mtime) across calls (see weights.file_id).
    onednn: in fp32 on the CPU, run the linear layers through oneDNN (onednn.py); False keeps
    PyTorch's default kernels, as a plain torch hub model has them.
    """
    arch, path = _weights_file(name, weights, cache_dir)
    vit = _build_vit(arch)
    if path is not None:
        W.load_into(vit, W.read_checkpoint(path, arch), arch, str(path))
        weights_id = W.file_id(path, hash_cache)
    else:
        log.warning("backbone %s has random weights: for tests and demos only, not for retrieval", name)
        weights_id = _random_id(arch)
    where = resolve_device(device)
    return Backbone(arch, vit, device=where, dtype=resolve_dtype(dtype, where), weights_id=weights_id, onednn=onednn)

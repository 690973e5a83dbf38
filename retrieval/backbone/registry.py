"""The closed registry of backbones: short name -> architecture, official weights and token rules."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


PATCH_SIZE = 14  # every DINOv2 model: what decoders resize to multiples of, before any model is built


@dataclass(frozen=True)
class Arch:
    """One DINOv2 variant.

    `antialias_pos` selects the official position-embedding interpolation rule: the
    register models resize to the target grid with antialiasing; the original models
    use a scale factor of (grid + 0.1) / 37 without antialiasing.
    """

    name: str
    timm_name: str | None  # timm's model of the same layout (tests/test_vit.py); None for the test model
    dim: int
    depth: int
    heads: int
    num_registers: int
    swiglu: bool = False
    pretrain_grid: int = 37  # 518 / 14
    random_only: bool = False

    @property
    def antialias_pos(self) -> bool:
        return self.num_registers > 0

    @property
    def checkpoint_file(self) -> str:
        reg = f"_reg{self.num_registers}" if self.num_registers else ""
        return f"{self.name.removesuffix('_reg')}{reg}_pretrain.pth"

    @property
    def url(self) -> str:
        return f"{OFFICIAL_BASE_URL}/{self.name.removesuffix('_reg')}/{self.checkpoint_file}"

    def describe(self) -> str:
        reg = f"{self.num_registers} registers" if self.num_registers else "no registers"
        return f"{self.name} (dim {self.dim}, {self.depth} blocks, {reg})"


def _pair(size: str, dim: int, depth: int, heads: int, *, swiglu: bool = False) -> list[Arch]:
    timm_size = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    return [
        Arch(f"dinov2_vit{size}14", f"vit_{timm_size}_patch14_dinov2", dim, depth, heads, 0, swiglu),
        Arch(f"dinov2_vit{size}14_reg", f"vit_{timm_size}_patch14_reg4_dinov2", dim, depth, heads, 4, swiglu),
    ]


def registry() -> dict[str, Arch]:
    """Name -> Arch. Built on call: no module-level mutable state."""
    archs = [
        *_pair("s", 384, 12, 6),
        *_pair("b", 768, 12, 12),
        *_pair("l", 1024, 24, 16),
        *_pair("g", 1536, 40, 24, swiglu=True),
        Arch("test_tiny", None, 32, 2, 2, 0, pretrain_grid=16, random_only=True),
    ]
    return {a.name: a for a in archs}

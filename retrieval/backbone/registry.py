"""The closed registry of backbones: short name -> architecture, official weights and token rules."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnknownBackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
# DINOv3 weights are gated: Meta e-mails signed URLs to those who request access on this page
DINOV3_REQUEST_PAGE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
DINOV3_LICENSE = "DINOv3 License (Meta, custom; not Apache-2.0)"

@dataclass(frozen=True)
class Arch:
    """One DINOv2 or DINOv3 variant.

    `antialias_pos` (DINOv2) selects the official position-embedding interpolation rule: the
    register models resize to the target grid with antialiasing; the original models
    use a scale factor of (grid + 0.1) / 37 without antialiasing.
    DINOv3 (`family == "dinov3"`) has no position embedding but axial RoPE; `num_registers` are
    its storage tokens, `ffn` its feed-forward ("mlp", or "swiglu" with `swiglu_align`),
    `ffn_ratio` its hidden width over `dim` before SwiGLU's 2/3, `eps` its LayerNorms' eps.
    """

    name: str
    timm_name: str | None  # timm's model of the same layout (tests); None for the test models
    dim: int
    depth: int
    heads: int
    num_registers: int
    swiglu: bool = False
    pretrain_grid: int = 37  # 518 / 14
    random_only: bool = False
    family: str = "dinov2"
    patch_size: int = 14
    ffn_ratio: float = 4.0
    swiglu_align: int = 8
    qkv_bias: bool = True
    eps: float = 1e-6
    checkpoint_hash: str = ""  # DINOv3: the hash in Meta's file name
    hf_name: str | None = None  # Hugging Face transformers' repository of the same weights

    @property
    def antialias_pos(self) -> bool:
        return self.num_registers > 0

    @property
    def licence(self) -> str:
        return DINOV3_LICENSE if self.family == "dinov3" else "Apache-2.0"

    @property
    def checkpoint_file(self) -> str:
        if self.family == "dinov3":
            return f"{self.name}_pretrain_lvd1689m-{self.checkpoint_hash}.pth"
        reg = f"_reg{self.num_registers}" if self.num_registers else ""
        return f"{self.name.removesuffix('_reg')}{reg}_pretrain.pth"

    @property
    def url(self) -> str | None:
        """The official download URL; None for DINOv3, whose URLs Meta e-mails on request."""
        if self.family == "dinov3":
            return None
        return f"{OFFICIAL_BASE_URL}/{self.name.removesuffix('_reg')}/{self.checkpoint_file}"

    @property
    def where(self) -> str:
        """Where the official file comes from: its URL, or how to get one for gated DINOv3."""
        return self.url or f"gated: request its URL at {DINOV3_REQUEST_PAGE}"

    @property
    def source(self) -> str:
        """The official weights for `retrieve models`: their URL, or file name and how to get it."""
        if self.random_only:
            return "random weights (tests only)"
        return self.url or f"{self.checkpoint_file}, {self.where}"

    def describe(self) -> str:
        what = "storage tokens" if self.family == "dinov3" else "registers"
        reg = f"{self.num_registers} {what}" if self.num_registers else f"no {what}"
        patch = f", patch {self.patch_size}" if self.family == "dinov3" else ""
        return f"{self.name} (dim {self.dim}, {self.depth} blocks, {reg}{patch})"


def _pair(size: str, dim: int, depth: int, heads: int, *, swiglu: bool = False) -> list[Arch]:
    timm_size = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    return [
        Arch(f"dinov2_vit{size}14", f"vit_{timm_size}_patch14_dinov2", dim, depth, heads, 0, swiglu),
        Arch(f"dinov2_vit{size}14_reg", f"vit_{timm_size}_patch14_reg4_dinov2", dim, depth, heads, 4, swiglu),
    ]


def _v3(short: str, timm_size: str, dim: int, depth: int, heads: int, file_hash: str, *, ffn_ratio: float = 4.0,
        swiglu_align: int = 0, qkv_bias: bool = True) -> Arch:
    """A DINOv3 ViT/16 at Meta's hub settings (dinov3/hub/backbones.py): 4 storage tokens,
    LayerNorm eps 1e-5 ("layernormbf16"), RoPE base 100; swiglu_align=0 means the GELU MLP."""
    return Arch(f"dinov3_{short}", f"vit_{timm_size}_patch16_dinov3", dim, depth, heads, 4, swiglu=swiglu_align > 0,
                pretrain_grid=0, family="dinov3", patch_size=16, ffn_ratio=ffn_ratio, swiglu_align=swiglu_align or 8,
                qkv_bias=qkv_bias, eps=1e-5, checkpoint_hash=file_hash,
                hf_name=f"facebook/dinov3-{short}-pretrain-lvd1689m")


def registry() -> dict[str, Arch]:
    """Name -> Arch. Built on call: no module-level mutable state."""
    archs = [
        *_pair("s", 384, 12, 6),
        *_pair("b", 768, 12, 12),
        *_pair("l", 1024, 24, 16),
        *_pair("g", 1536, 40, 24, swiglu=True),
        _v3("vits16", "small", 384, 12, 6, "08c60483"),
        _v3("vits16plus", "small_plus", 384, 12, 6, "4057cbaa", ffn_ratio=6.0, swiglu_align=8),
        _v3("vitb16", "base", 768, 12, 12, "73cec8be"),
        _v3("vitl16", "large", 1024, 24, 16, "8aa4cbdd"),
        _v3("vith16plus", "huge_plus", 1280, 32, 20, "7c1da9a5", ffn_ratio=6.0, swiglu_align=8),
        _v3("vit7b16", "7b", 4096, 40, 32, "a955f4ea", ffn_ratio=3.0, swiglu_align=64, qkv_bias=False),
        Arch("test_tiny", None, 32, 2, 2, 0, pretrain_grid=16, random_only=True),
        Arch("test_tiny_v3", None, 32, 2, 2, 4, random_only=True, pretrain_grid=0, family="dinov3", patch_size=16,
             eps=1e-5),
    ]
    return {a.name: a for a in archs}


def patch_size(name: str) -> int:
    """The patch size of backbone `name` (14 for DINOv2, 16 for DINOv3), without building it: what
    decoders resize images to multiples of before any model exists."""
    archs = registry()
    if name not in archs:
        raise UnknownBackboneError(name, list(archs))
    return archs[name].patch_size

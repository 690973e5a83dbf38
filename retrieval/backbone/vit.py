"""The DINOv2 vision transformer, small enough to read in one sitting.

The same arithmetic as Meta's `dinov2/models/vision_transformer.py` and `dinov2/layers/` at
inference (pre-norm blocks, LayerScale, exact GELU or SwiGLU, final LayerNorm with eps 1e-6),
with attention through `F.scaled_dot_product_attention` as upstream DINOv2 and timm run it. The
parameters are named as timm's `VisionTransformer` names them ("timm layout": `reg_token`,
`mlp.fc1`/`mlp.fc2`, the class token's position folded into `cls_token` for register models), so
timm-layout files and `weights.official_to_timm` load unchanged.

Why not timm itself: importing timm imports torchvision and with it torch._dynamo, about 2.5 s
on every `retrieve query` before any work (docs/decisions.md). tests/test_vit.py checks the tokens
against timm's `VisionTransformer` bit for bit, tests/test_fidelity.py against Meta's code.

`build_vit` allocates no values for checkpoints: the model is made on the "meta" device and the
weights are assigned, not copied (a random init of ViT-g alone costs seconds). Only the random
`test_tiny` model is initialised, from its own seeded generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Arch

PATCH = 14
TEST_TINY_SEED = 0
# names test_tiny's weights in an index (its weights_id): timm's draw was "random:test_tiny:seed0",
# so an index made with those weights is refused with a clear message rather than queried with these
TEST_TINY_WEIGHTS = f"random:test_tiny:own-init:seed{TEST_TINY_SEED}"


def interpolate_pos_embed(
    patch_pos: torch.Tensor, grid: tuple[int, int], *, antialias: bool
) -> torch.Tensor:
    """Resize the patch position embeddings `(1, M*M, d)` to `grid` = (h, w), as the official code does.

    antialias=False (original DINOv2): bicubic with scale factor (grid + 0.1) / M, no antialiasing.
    antialias=True (register models): bicubic to the exact target size with antialiasing.
    Computed in float32; returns `(1, h*w, d)`.
    """
    _, n, d = patch_pos.shape
    m = int(math.isqrt(n))
    assert m * m == n, "pretrained position grid must be square"
    h, w = grid
    if (h, w) == (m, m):
        return patch_pos
    src = patch_pos.float().reshape(1, m, m, d).permute(0, 3, 1, 2)
    if antialias:
        out = F.interpolate(src, size=(h, w), mode="bicubic", antialias=True)
    else:
        out = F.interpolate(src, scale_factor=((h + 0.1) / m, (w + 0.1) / m), mode="bicubic", antialias=False)
    assert tuple(out.shape[-2:]) == (h, w)
    return out.permute(0, 2, 3, 1).reshape(1, h * w, d).to(patch_pos.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches (14 here, 16 in DINOv3) to `dim` channels: `(n, 3, H, W)` ->
    `(n, H/p * W/p, dim)`; a remainder of H or W is dropped, as the convolution does."""

    def __init__(self, dim: int, patch: int = PATCH) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head dim)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1, exact GELU, fc2 (ViT-S/B/L). onednn.py folds the GELU into fc1 and makes `act` Identity."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act: nn.Module = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's feed-forward: fc1 (the official `w12`) gives two halves, silu(first) * second, then
    fc2 (`w3`). Hidden width as the official SwiGLUFFNFused rounds it: 4096 for dim 1536."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act: nn.Module = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.act(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, heads: int, *, swiglu: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp: nn.Module = SwiGLU(dim, swiglu_hidden(dim)) if swiglu else Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def swiglu_hidden(dim: int) -> int:
    """The official SwiGLUFFNFused width: (int(4 * dim * 2 / 3) + 7) // 8 * 8."""
    return (int(4 * dim * 2 / 3) + 7) // 8 * 8


class VisionTransformer(nn.Module):
    """DINOv2 ViT/14. `tokens(x)`: `(n, 3, H, W)` -> `(n, 1 + registers + H/14 * W/14, dim)` after the final norm.

    Register models (`num_registers > 0`) keep position embeddings for the patches only, the class
    token's being folded into `cls_token` (timm's `no_embed_class`); the others keep one for the class
    token at index 0 of `pos_embed`.
    """

    def __init__(self, *, dim: int, depth: int, heads: int, num_registers: int = 0, swiglu: bool = False,
                 pretrain_grid: int = 37) -> None:
        super().__init__()
        self.num_registers = num_registers
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        if num_registers:
            self.reg_token = nn.Parameter(torch.empty(1, num_registers, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, pretrain_grid ** 2 + (0 if num_registers else 1), dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, swiglu=swiglu) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def tokens(self, x: torch.Tensor, *, antialias: bool) -> torch.Tensor:
        """x: `(n, 3, H, W)`, H and W multiples of 14. `antialias` picks the position-embedding rule
        (interpolate_pos_embed): True for the register models, False for the original ones."""
        b, _, height, width = x.shape
        grid = (height // PATCH, width // PATCH)
        t = self.patch_embed(x)
        cls = self.cls_token.expand(b, -1, -1)
        if self.num_registers:  # cls already carries its position embedding
            t = t + interpolate_pos_embed(self.pos_embed, grid, antialias=antialias).to(t.dtype)
            t = torch.cat([cls, self.reg_token.expand(b, -1, -1), t], dim=1)
        else:
            pos = self.pos_embed
            patch_pos = interpolate_pos_embed(pos[:, 1:], grid, antialias=antialias)
            t = torch.cat([cls, t], dim=1) + torch.cat([pos[:, :1], patch_pos.to(pos.dtype)], dim=1)
        return self.norm(self.blocks(t))


def build_vit(arch: Arch, *, init: bool) -> VisionTransformer:
    """The ViT of `arch`. init=False: on the "meta" device, no memory and no values, for
    `load_state_dict(..., assign=True)`; init=True: on the CPU with `init_random`'s values."""
    with torch.device("meta"):  # also keeps nn.Linear's own init (and the global RNG) out of it
        vit = VisionTransformer(dim=arch.dim, depth=arch.depth, heads=arch.heads, num_registers=arch.num_registers,
                                swiglu=arch.swiglu, pretrain_grid=arch.pretrain_grid)
    if init:
        vit.to_empty(device="cpu")
        init_random(vit, seed=TEST_TINY_SEED)
    return vit


@torch.no_grad()
def init_random(vit: nn.Module, *, seed: int) -> None:
    """timm's ViT init, drawn from a generator of its own (the global RNG is left alone): linear
    weights and position embeddings truncated normal with std 0.02, biases 0, class and register
    tokens normal with std 1e-6 (DINOv3's storage tokens too), the patch projection PyTorch's default for a convolution
    (uniform in +-1/sqrt(fan in)), LayerNorms 1 and 0, LayerScale 1e-5 (every block starts near
    the identity)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in vit.named_parameters():
        if name.startswith("patch_embed.proj."):
            bound = 1 / math.sqrt(vit.get_parameter("patch_embed.proj.weight")[0].numel())
            p.uniform_(-bound, bound, generator=g)
        elif name == "pos_embed" or (p.ndim == 2 and name.endswith(".weight")):  # linear weights
            nn.init.trunc_normal_(p, std=0.02, generator=g)
        elif name in ("cls_token", "reg_token", "storage_tokens"):
            p.normal_(0, 1e-6, generator=g)
        elif name.endswith(".gamma"):
            p.fill_(1e-5)
        elif name.startswith("norm") or ".norm" in name:
            p.fill_(1.0 if name.endswith(".weight") else 0.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:  # pragma: no cover - a new parameter must get a rule here
            raise AssertionError(f"no init rule for {name}")

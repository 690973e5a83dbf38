"""The DINOv3 vision transformer (ViT/16 with axial RoPE and storage tokens), our own code.

The arithmetic of Meta's `dinov3/models/vision_transformer.py` and `dinov3/layers/` at inference
(the commit is in docs/backbone.md and tests/test_fidelity_v3.py):
- patches of 16 by a convolution (an input that is not a multiple of 16 loses its last rows and
  columns, as the convolution in Meta's code drops them);
- the class token, then 4 storage tokens, then the patches; no learned position embedding;
- axial RoPE on the patch tokens' queries and keys, none on the 5 prefix tokens: each patch centre
  at ((i + 0.5) / h, (j + 0.5) / w) mapped to [-1, 1], angles 2 pi coord / period for the head
  dimensions' quarter per axis (rows first, then columns), `rotate_half` pairing. The periods are
  the checkpoint's `rope_embed.periods` buffer: Meta trained with them in bf16 and the files keep
  those bf16 values, which differ from periods recomputed in fp32 enough to move the tokens
  (tests/test_fidelity_v3.py shows it). Computed in fp32 even under bf16 autocast, as upstream;
- pre-norm blocks with LayerScale, LayerNorm eps 1e-5, exact-GELU MLP (S, B, L) or SwiGLU
  (S+, H+, 7B; hidden width int(int(dim * ratio) * 2 / 3) rounded up to 8, or to 64 for the 7B);
- the qkv projection's key bias is masked to zero in Meta's code (`LinearKMaskedBias`): a file's
  `bias_mask` is applied to `qkv.bias` once when it is loaded (weights3.py), the same product;
- one final LayerNorm over all tokens. The 7B's files also carry `local_cls_norm`, used by Meta
  only on local crops in training, never at inference (dropped when loading).

Parameters keep Meta's names (the "official layout"), less `mask_token`, `bias_mask` and
`local_cls_norm`; timm's and Hugging Face's layouts are converted in weights3.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Arch
from .vit import TEST_TINY_SEED, LayerScale, Mlp, PatchEmbed, init_random

TEST_TINY_V3_WEIGHTS = f"random:test_tiny_v3:own-init:seed{TEST_TINY_SEED}"  # its weights_id
ROPE_BASE = 100.0  # every DINOv3 ViT (dinov3/hub/backbones.py: pos_embed_rope_base=100)


def default_periods(head_dim: int, *, base: float = ROPE_BASE, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """RoPE periods `(head_dim // 4,)` as Meta's training computed them: base ** (2 k / (head_dim / 2))
    in `dtype` (bf16, what the official files hold), returned as float32. For files that lack the
    buffer (timm's, Hugging Face's); dtype=float32 gives the recomputed periods those libraries use."""
    k = torch.arange(head_dim // 4, dtype=dtype)
    return (base ** (2 * k / (head_dim // 2))).float()


class Rope(nn.Module):
    """sin, cos `(h*w, head_dim)` for an h x w patch grid ("separate" coordinate normalisation)."""

    periods: torch.Tensor

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("periods", torch.empty(head_dim // 4))

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.periods.device
        coords_h = torch.arange(0.5, h, device=device, dtype=torch.float32) / h
        coords_w = torch.arange(0.5, w, device=device, dtype=torch.float32) / w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0  # (h*w, 2) in [-1, 1]
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # (h*w, 2, head_dim/4)
        angles = angles.flatten(1, 2).tile(2)  # (h*w, head_dim)
        return torch.sin(angles), torch.cos(angles)


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, *, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (b, heads, n, head_dim)
        prefix = n - sin.shape[-2]
        # RoPE in the dtype of sin/cos (fp32), the prefix tokens left as they are
        q = torch.cat([q[:, :, :prefix].float(), _rotate(q[:, :, prefix:].float(), sin, cos)], dim=-2).to(v.dtype)
        k = torch.cat([k[:, :, :prefix].float(), _rotate(k[:, :, prefix:].float(), sin, cos)], dim=-2).to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x), Meta's `SwiGLUFFN` names; `hidden` already rounded (swiglu_hidden)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


def swiglu_hidden(dim: int, ratio: float, align: int) -> int:
    """Meta's SwiGLUFFN width: d = int(int(dim * ratio) * 2 / 3), rounded up to a multiple of `align`."""
    d = int(int(dim * ratio) * 2 / 3)
    return d + (-d % align)


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        dim = arch.dim
        self.norm1 = nn.LayerNorm(dim, eps=arch.eps)
        self.attn = Attention(dim, arch.heads, qkv_bias=arch.qkv_bias)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=arch.eps)
        self.mlp: nn.Module = (SwiGLU(dim, swiglu_hidden(dim, arch.ffn_ratio, arch.swiglu_align)) if arch.swiglu
                               else Mlp(dim, int(dim * arch.ffn_ratio)))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), sin, cos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer3(nn.Module):
    """DINOv3 ViT/16. `tokens(x)`: `(n, 3, H, W)` -> `(n, 1 + storage + (H//16) * (W//16), dim)` after
    the final norm; `grid(H, W)` is the patch grid those tokens cover."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.patch = arch.patch_size
        self.patch_embed = PatchEmbed(arch.dim, arch.patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, arch.dim))
        self.storage_tokens = nn.Parameter(torch.empty(1, arch.num_registers, arch.dim))
        self.rope_embed = Rope(arch.dim // arch.heads)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.dim, eps=arch.eps)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch, width // self.patch

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        h, w = self.grid(height, width)
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(b, -1, -1), self.storage_tokens.expand(b, -1, -1), t], dim=1)
        sin, cos = self.rope_embed(h, w)
        for block in self.blocks:
            t = block(t, sin, cos)
        return self.norm(t)


def build_vit3(arch: Arch, *, init: bool) -> VisionTransformer3:
    """As vit.build_vit: empty ("meta" device) for a checkpoint, or random for `test_tiny_v3`."""
    with torch.device("meta"):
        vit = VisionTransformer3(arch)
    if init:
        vit.to_empty(device="cpu")
        init_random(vit, seed=TEST_TINY_SEED)
        vit.rope_embed.periods.copy_(default_periods(arch.dim // arch.heads))
    return vit

"""Meta's own DINOv2 code as the fidelity reference (PyPI `dinov2==0.0.1.dev2`, April 2023).

That release predates register tokens. For the `_reg` variants this module adds exactly what
upstream facebookresearch/dinov2 later added: a `register_tokens` parameter inserted after the
class token once position embeddings are added, and position embeddings resized by bicubic
interpolation *with* antialiasing (`interpolate_antialias=True, interpolate_offset=0.0` in
`hub/backbones.py`), both in commit 9c7e324 (Oct 2023); resized to the exact target grid size
rather than by a scale factor since commit e1277af (Feb 2024). Checked against the upstream code
at b8931f7 (its HEAD in Aug 2025; docs/backbone.md).
Everything else (patch embedding, blocks, attention, norm) is the released code, untouched.

The package is installed `--no-deps` into a test-only folder (see scripts/test.sh) and found
through the RETRIEVAL_DINOV2_REF environment variable or the normal import path.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import warnings
from functools import partial
from typing import Any

import torch
from torch import nn

ARCHS = {"s": "vit_small", "b": "vit_base", "l": "vit_large", "g": "vit_giant2"}


def import_reference() -> Any:
    """The `dinov2.models.vision_transformer` module, or raise ImportError saying why."""
    extra = os.environ.get("RETRIEVAL_DINOV2_REF")
    if extra and extra not in sys.path:
        sys.path.insert(0, extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "xFormers not available"
        return importlib.import_module("dinov2.models.vision_transformer")


def official_model(size: str, *, registers: int = 0, seed: int = 0) -> nn.Module:
    """The official ViT-{size}/14 at the hub settings (img 518, layerscale, no chunks), random weights."""
    vits = import_reference()
    kwargs: dict[str, Any] = dict(
        patch_size=14, img_size=518, init_values=1.0, block_chunks=0,
        ffn_layer="swiglufused" if size == "g" else "mlp",
    )
    torch.manual_seed(seed)
    if registers:
        dims = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}[size]
        block = partial(vits.Block, attn_class=vits.MemEffAttention)  # as the released factories do
        model = _with_registers(vits.DinoVisionTransformer)(
            num_register_tokens=registers, embed_dim=dims[0], depth=dims[1], num_heads=dims[2],
            mlp_ratio=4, block_fn=block, **kwargs,
        )
    else:
        model = getattr(vits, ARCHS[size])(**kwargs)
    _randomize(model, seed)
    return model.eval()


def _with_registers(base: type) -> Any:
    class RegisterViT(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, num_register_tokens: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.num_register_tokens = num_register_tokens
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, self.embed_dim))

        def interpolate_pos_encoding(self, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
            previous_dtype = x.dtype
            npatch = x.shape[1] - 1
            n = self.pos_embed.shape[1] - 1
            if npatch == n and w == h:
                return self.pos_embed
            pos_embed = self.pos_embed.float()
            m = int(math.sqrt(n))
            patch_pos = pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
            patch_pos = nn.functional.interpolate(
                patch_pos, size=(w // self.patch_size, h // self.patch_size), mode="bicubic", antialias=True
            )
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])
            return torch.cat((pos_embed[:, :1], patch_pos), dim=1).to(previous_dtype)

        def prepare_tokens_with_masks(self, x: torch.Tensor, masks: Any = None) -> torch.Tensor:
            x = super().prepare_tokens_with_masks(x, masks)
            regs = self.register_tokens.expand(x.shape[0], -1, -1)
            return torch.cat((x[:, :1], regs, x[:, 1:]), dim=1)

        def forward_features(self, x: torch.Tensor, masks: Any = None) -> dict[str, torch.Tensor]:
            x = self.prepare_tokens_with_masks(x, masks)
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(x)
            return {"x_norm_clstoken": x[:, 0], "x_norm_patchtokens": x[:, 1 + self.num_register_tokens:]}

    return RegisterViT


def _randomize(model: nn.Module, seed: int) -> None:
    """Weights with realistic spread, so position-embedding rules and token order matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("pos_embed", "cls_token", "register_tokens", "mask_token"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p[0].numel())))


def official_tokens(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        out = model.forward_features(x)
    return out["x_norm_clstoken"], out["x_norm_patchtokens"]

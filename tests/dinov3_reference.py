"""Meta's own DINOv3 code as the fidelity reference: facebookresearch/dinov3 at commit
6876159a11b4df116f30f667f8c9888617df0751, vendored unchanged under tests/reference/dinov3/
(DINOv3 License; see its README.md). Nothing is downloaded: a bare clone has it.

`official_model` builds a model through Meta's own hub factory (`dinov3/hub/backbones.py`,
`pretrained=False`), so every hyper-parameter (eps, storage tokens, FFN kind and width, qkv bias,
K-bias mask, untied norms, RoPE settings) is Meta's; only depth (and for the 7B the width, keeping
its head size of 128) may be reduced, by overriding those arguments where the factory builds
`DinoVisionTransformer`. Every parameter is then random; the RoPE periods are what Meta's
training computed (RopePositionEmbedding with dtype bf16), as the official files hold them.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

COMMIT = "6876159a11b4df116f30f667f8c9888617df0751"
ROOT = Path(__file__).parent / "reference" / "dinov3"


def import_reference() -> Any:
    """Meta's `dinov3.hub.backbones` module (vendored)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    importlib.import_module("dinov3.models.vision_transformer")
    return importlib.import_module("dinov3.hub.backbones")


def official_periods(head_dim: int) -> torch.Tensor:
    """The periods as Meta's training made them (bf16), i.e. as the official checkpoints store them."""
    import_reference()
    from dinov3.layers import RopePositionEmbedding

    rope = RopePositionEmbedding(head_dim * 4, num_heads=4, base=100.0, dtype=torch.bfloat16)
    assert rope.D_head == head_dim
    return rope.periods.detach().clone()


def official_model(name: str, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """Meta's `name` (e.g. "dinov3_vits16") from its hub factory, random weights, eval mode.
    `overrides` (depth, embed_dim, num_heads) replace the factory's values."""
    hub = import_reference()
    vits = importlib.import_module("dinov3.models.vision_transformer")
    real = vits.DinoVisionTransformer

    def reduced(**kwargs: Any) -> nn.Module:
        model = real(**{**kwargs, **overrides})
        model.init_weights = lambda: None  # randomize() sets every value: skip the factory's slower init
        return model

    vits.DinoVisionTransformer = reduced
    try:
        model = getattr(hub, name)(pretrained=False)
    finally:
        vits.DinoVisionTransformer = real
    randomize(model, seed)
    return model.eval()


def randomize(model: nn.Module, seed: int) -> None:
    """Every parameter random with a realistic spread (LayerScale gammas in [0.5, 1.5], near 1);
    the periods buffer set to Meta's bf16 values; the K-bias mask as Meta's init leaves it (q and v
    biases on, k bias off), as in the official files."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("cls_token", "storage_tokens", "mask_token"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p[0].numel())))
        for name, b in model.named_buffers():
            if name.endswith("bias_mask"):
                b.fill_(1)
                b[b.numel() // 3: 2 * b.numel() // 3] = 0
        rope = model.rope_embed
        rope.periods.copy_(official_periods(rope.D_head))


def official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as an official file holds it: every key, periods in bf16."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["rope_embed.periods"] = sd["rope_embed.periods"].to(torch.bfloat16)
    return sd


def official_tokens(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        out = model.forward_features(x)
    return out["x_norm_clstoken"], out["x_norm_patchtokens"]

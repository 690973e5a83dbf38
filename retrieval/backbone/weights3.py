"""DINOv3 state dicts in three key layouts, converted to the one our ViT (vit3.py) keeps.

- official: Meta's `.pth` (`storage_tokens`, `blocks.N.attn.qkv.bias_mask`, `rope_embed.periods`
  in bf16, `mask_token`, the 7B's `local_cls_norm`);
- timm (`vit_*_patch16_dinov3.lvd1689m` safetensors): `reg_token`, `gamma_1`/`gamma_2`, separate
  `q_bias`/`v_bias` (none at all in the models without `_qkvb`), SwiGLU as `fc1_g`/`fc1_x`/`fc2`,
  no periods;
- Hugging Face transformers (`facebook/dinov3-*-pretrain-lvd1689m` safetensors): `embeddings.*`,
  `layer.N.*` (`model.layer.N.*` since transformers 5), separate q/k/v projections, `lambda1`/
  `lambda2`, `up_proj`/`down_proj` (and `gate_proj`), no periods.

Files without periods get Meta's bf16 values (vit3.default_periods), which are what the official
files hold: timm and transformers recompute them in fp32 instead, so their own models' tokens
differ slightly from Meta's (docs/backbone.md has the measured gap).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HF_BLOCK = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")


def layout(sd: dict[str, torch.Tensor]) -> str | None:
    """"official", "timm" or "hf" for a DINOv3 state dict in that layout; None when it is not one."""
    if "embeddings.register_tokens" in sd or "embeddings.patch_embeddings.weight" in sd:
        return "hf"
    if "storage_tokens" in sd:
        return "official"
    if "reg_token" in sd and "pos_embed" not in sd and any(k.endswith(".gamma_1") for k in sd):
        return "timm"
    return None


def to_ours(sd: dict[str, torch.Tensor], *, head_dim: int, qkv_bias: bool = True) -> dict[str, torch.Tensor]:
    """Any of the three layouts (or ours) -> our ViT's keys; anything else unchanged (the caller's
    key check then names what it looks like). `head_dim` sizes the periods a file lacks; `qkv_bias`:
    whether the model has a qkv bias, zero where a timm file has none."""
    kind = layout(sd)
    if kind == "hf":
        sd = hf_to_official(sd, head_dim=head_dim)
    elif kind == "timm":
        sd = timm_to_official(sd, head_dim=head_dim, qkv_bias=qkv_bias)
    elif kind is None:
        return sd
    return official_to_ours(sd)


def official_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply each `qkv.bias_mask` to its `qkv.bias` (the product Meta's LinearKMaskedBias forms on
    every call) and drop what inference never reads: `mask_token` (its `0 * mask_token` adds
    nothing), `local_cls_norm` (local crops in training only) and the masks."""
    out = {}
    for k, v in sd.items():
        if k == "mask_token" or k.startswith("local_cls_norm.") or k.endswith(".bias_mask"):
            continue
        mask = sd.get(k + "_mask") if k.endswith(".qkv.bias") else None
        out[k] = v * mask.to(v.dtype) if mask is not None else v
    return out


def _qkv_bias(q: torch.Tensor | None, k: torch.Tensor | None, v: torch.Tensor | None,
              like: torch.Tensor) -> torch.Tensor | None:
    """q, k, v biases as one qkv bias; a missing one is zero; all missing: None."""
    import torch

    if q is None and k is None and v is None:
        return None
    dim = like.shape[0] // 3
    parts = [b if b is not None else torch.zeros(dim, dtype=like.dtype) for b in (q, k, v)]
    return torch.cat(parts)


def _periods(head_dim: int) -> torch.Tensor:
    from .vit3 import default_periods

    return default_periods(head_dim)


def timm_to_official(sd: dict[str, torch.Tensor], *, head_dim: int, qkv_bias: bool = True) -> dict[str, torch.Tensor]:
    """timm's Eva DINOv3 keys -> Meta's. A file without q/v biases (timm's non-`_qkvb` models) gives a
    zero qkv bias when the model has one (`qkv_bias`; all but the 7B): the same sums."""
    renames = [(".gamma_1", ".ls1.gamma"), (".gamma_2", ".ls2.gamma"), (".mlp.fc1_g.", ".mlp.w1."),
               (".mlp.fc1_x.", ".mlp.w2.")]
    swiglu = any(".mlp.fc1_g." in k for k in sd)
    out: dict[str, torch.Tensor] = {"rope_embed.periods": _periods(head_dim)}
    for k, v in sd.items():
        if k.endswith((".q_bias", ".v_bias", ".k_bias")) or k.startswith("rope."):
            continue
        name = "storage_tokens" if k == "reg_token" else k
        for old, new in renames:
            name = name.replace(old, new)
        if swiglu:
            name = name.replace(".mlp.fc2.", ".mlp.w3.")
        out[name] = v
        if name.endswith(".attn.qkv.weight"):
            pre = k.removesuffix("qkv.weight")
            bias = _qkv_bias(sd.get(pre + "q_bias"), sd.get(pre + "k_bias"), sd.get(pre + "v_bias"), v)
            if bias is not None or qkv_bias:
                out[name.removesuffix("weight") + "bias"] = bias if bias is not None else v.new_zeros(v.shape[0])
    return out


def official_to_timm(sd: dict[str, torch.Tensor], *, qkv_bias: bool = True) -> dict[str, torch.Tensor]:
    """Meta's keys -> timm's (`_qkvb` models when qkv_bias, else the K-masked bias must be all zero and
    is dropped); for tests and for users converting files."""
    sd = official_to_ours(sd)
    swiglu = any(".mlp.w1." in k for k in sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "rope_embed.periods":
            continue
        if k.endswith(".attn.qkv.bias"):
            q, _, vb = v.chunk(3)
            if qkv_bias:
                out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, vb
            else:
                assert not v.any(), "timm's models without _qkvb have no qkv bias"
            continue
        name = "reg_token" if k == "storage_tokens" else k
        for old, new in [(".ls1.gamma", ".gamma_1"), (".ls2.gamma", ".gamma_2"), (".mlp.w1.", ".mlp.fc1_g."),
                         (".mlp.w2.", ".mlp.fc1_x."), (".mlp.w3.", ".mlp.fc2.")]:
            name = name.replace(old, new)
        out[name] = v
    assert swiglu == any(".fc1_g." in k for k in out)
    return out


_HF_BLOCK_RENAMES = [
    ("attention.o_proj.", "attn.proj."), ("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.gate_proj.", "mlp.w1."),
]
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "storage_tokens",
           "embeddings.mask_token": "mask_token", "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.bias": "patch_embed.proj.bias"}


def hf_to_official(sd: dict[str, torch.Tensor], *, head_dim: int) -> dict[str, torch.Tensor]:
    """transformers' DINOv3ViTModel keys -> Meta's: q/k/v projections concatenated into `qkv` (a
    missing bias is zero), `up_proj` is `fc1` in the GELU MLP and `w2` beside `gate_proj` in SwiGLU."""
    import torch

    gated = any(".mlp.gate_proj." in k for k in sd)
    out: dict[str, torch.Tensor] = {"rope_embed.periods": _periods(head_dim)}
    for k, v in sd.items():
        m = HF_BLOCK.match(k)
        if m is None:
            out[_HF_TOP.get(k, k)] = v  # the final `norm.*` keeps its name; unknown keys are left to the key check
            continue
        i, rest = m.groups()
        if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            continue
        for old, new in [*_HF_BLOCK_RENAMES, ("mlp.up_proj.", "mlp.w2." if gated else "mlp.fc1."),
                         ("mlp.down_proj.", "mlp.w3." if gated else "mlp.fc2.")]:
            rest = rest.replace(old, new)
        out[f"blocks.{i}.{rest}"] = v
    for i in sorted({int(m.group(1)) for k in sd if (m := HF_BLOCK.match(k))}):
        pre = next(p for p in (f"layer.{i}.attention.", f"model.layer.{i}.attention.") if p + "q_proj.weight" in sd)
        weight = torch.cat([sd[pre + f"{x}_proj.weight"] for x in "qkv"])
        out[f"blocks.{i}.attn.qkv.weight"] = weight
        qb, kb, vb = (sd.get(pre + f"{x}_proj.bias") for x in "qkv")
        bias = _qkv_bias(qb, kb, vb, weight)
        if bias is not None:
            out[f"blocks.{i}.attn.qkv.bias"] = bias
    return out

"""Global descriptors from tokens. Pure functions on tensors; no state."""

from __future__ import annotations

import torch

from .config import POOLINGS


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of x (..., d) scaled to unit L2 norm."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def gem(patches: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over tokens: (n, t, d) -> (n, d), ((1/t) sum clamp(x, eps)^p)^(1/p).

    DINOv2 tokens are signed, so they are clamped at eps as in the GeM paper; p=1 is the mean
    of the clamped tokens and p -> inf approaches their max.
    """
    if patches.ndim != 3:
        raise ValueError(f"patches must be (n, tokens, d), got shape {tuple(patches.shape)}")
    if p <= 0:
        raise ValueError(f"GeM power must be positive, got {p}")
    return patches.clamp_min(eps).pow(p).mean(dim=1).pow(1.0 / p)


def global_descriptor(cls: torch.Tensor, patches: torch.Tensor, *, pooling: str = "cls+gem",
                      p: float = 3.0) -> torch.Tensor:
    """(n, d) CLS and (n, t, d) patches -> (n, D) L2-normalised descriptor.

    cls+gem: L2(CLS) concatenated with L2(GeM_p(patches)), D = 2d, then L2 again;
    cls: L2(CLS); gem: L2(GeM_p(patches)).
    """
    if pooling == "cls":
        return l2_normalize(cls.float())
    if pooling == "gem":
        return l2_normalize(gem(patches.float(), p))
    if pooling == "cls+gem":
        both = torch.cat([l2_normalize(cls.float()), l2_normalize(gem(patches.float(), p))], dim=-1)
        return l2_normalize(both)
    raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")

"""fp32 linear layers through oneDNN on the CPU.

PyTorch's CPU fp32 `linear` calls MKL's sgemm, and MKL runs its AVX2 kernels on AMD CPUs even
where they have AVX-512; oneDNN, also inside every PyTorch build, picks its kernels by instruction
set alone, and fusing the MLP's GELU into the layer before it saves a pass over the largest
activation (the measured speed-up, and on which machine: docs/throughput.md). The result equals
`F.linear` within fp32 rounding (the fidelity tests run this path against Meta's code).

The kernel is `torch.ops.mkldnn._linear_pointwise`, the operator torch.compile's CPU backend emits
for linear layers. It is internal to PyTorch, so `use_onednn` first checks it against `F.linear`
and leaves the model untouched when it is missing or disagrees.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .vit import Mlp

log = logging.getLogger(__name__)


class OneDnnLinear(torch.nn.Module):
    """`linear` (optionally followed by exact GELU) as one oneDNN call; shares the parameters, so
    a state dict keeps the keys `weight` and `bias`. Inference only: the operator has no gradient."""

    def __init__(self, linear: torch.nn.Linear, *, gelu: bool = False) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias, self.gelu)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, gelu={self.gelu}"


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    attr, algorithm = ("gelu", "none") if gelu else ("none", "")
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, attr, [], algorithm)
    return out


def available() -> bool:
    """True when the oneDNN linear operator exists here and agrees with F.linear (and F.gelu)."""
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 7, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
    try:
        with torch.inference_mode():
            plain = F.linear(x, w, b)
            return (torch.allclose(_linear(x, w, b, False), plain, rtol=1e-4, atol=1e-4)
                    and torch.allclose(_linear(x, w, b, True), F.gelu(plain), rtol=1e-4, atol=1e-4))
    except Exception as e:  # an internal operator: its absence or a changed signature must not break loading
        log.debug("oneDNN linear unavailable: %s", e)
        return False


def use_onednn(model: torch.nn.Module) -> int:
    """Swap `model`'s fp32 CPU `nn.Linear` layers for `OneDnnLinear`, folding exact GELU into the
    first layer of the plain `vit.Mlp` (not ViT-g's SwiGLU, whose activation gates half of fc1);
    returns how many layers now run through oneDNN (0 when the operator is unusable here, the model
    then unchanged)."""
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()) or not available():
        return 0
    swapped = 0
    for module in list(model.modules()):
        if type(module) is Mlp and type(module.act) is torch.nn.GELU and module.act.approximate == "none" \
                and type(module.fc1) is torch.nn.Linear:
            module.fc1 = OneDnnLinear(module.fc1, gelu=True)  # type: ignore[assignment]
            module.act = torch.nn.Identity()
            swapped += 1
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, name, OneDnnLinear(child))
                swapped += 1
    return swapped

"""fp32 CPU linear layers through oneDNN: same tokens as PyTorch's default kernels, same state dict,
a clean fallback when the operator is unusable. (Tokens against Meta's code: test_fidelity.py,
which runs the oneDNN path.)"""

from __future__ import annotations

import copy

import pytest
import torch

from retrieval import load_backbone
from retrieval.backbone import onednn
from retrieval.backbone.vit import Mlp, SwiGLU, VisionTransformer


def _vit() -> VisionTransformer:
    vit = VisionTransformer(dim=64, depth=2, heads=4, pretrain_grid=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5 if p.ndim > 1 else 0.1))
    return vit.eval()


def _relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_operator_is_usable_where_pytorch_has_onednn():
    # Every x86 PyTorch build ships oneDNN; if this fails the speed-up silently vanished.
    assert onednn.available() == torch.backends.mkldnn.is_available()


def test_swapped_vit_gives_the_same_tokens_and_keeps_its_state_dict():
    plain = _vit()
    fast = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    assert onednn.use_onednn(fast) == 2 * 4  # qkv, proj, fc1 (with its GELU), fc2 in each block
    assert list(fast.state_dict()) == keys
    assert not any(type(m) is torch.nn.Linear for m in fast.blocks.modules())
    assert all(type(b.mlp.act) is torch.nn.Identity and b.mlp.fc1.gelu for b in fast.blocks)
    x = torch.randn(3, 3, 56, 56)
    with torch.inference_mode():
        want, got = plain.tokens(x, antialias=False), fast.tokens(x, antialias=False)
    assert _relative_diff(got, want) < 1e-5


def test_gated_mlp_is_not_fused():
    """ViT-g's SwiGLU: its activation gates half of fc1, so GELU folding must not apply."""
    plain = SwiGLU(32, 32).eval()
    fast = copy.deepcopy(plain)
    assert onednn.use_onednn(fast) == 2
    assert type(fast.act) is torch.nn.SiLU and not fast.fc1.gelu
    x = torch.randn(2, 5, 32)
    with torch.inference_mode():
        assert _relative_diff(fast(x), plain(x)) < 1e-5


def test_tanh_gelu_is_not_fused():
    mlp = Mlp(16, 32).eval()
    mlp.act = torch.nn.GELU(approximate="tanh")
    assert onednn.use_onednn(mlp) == 2
    assert type(mlp.act) is torch.nn.GELU and not mlp.fc1.gelu


def test_unusable_operator_leaves_the_model_alone(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no such operator")

    monkeypatch.setattr(onednn, "_linear", broken)
    model = _vit()
    assert onednn.use_onednn(model) == 0
    assert type(model.blocks[0].attn.qkv) is torch.nn.Linear and type(model.blocks[0].mlp.act) is torch.nn.GELU


def test_wrong_results_leave_the_model_alone(monkeypatch):
    real = onednn._linear
    monkeypatch.setattr(onednn, "_linear", lambda x, w, b, gelu: real(x, w, b, gelu) * 1.01)
    assert not onednn.available()
    assert onednn.use_onednn(_vit()) == 0


def test_only_fp32_cpu_parameters_are_swapped():
    model = _vit().to(torch.bfloat16)
    assert onednn.use_onednn(model) == 0


@pytest.mark.parametrize("dtype,flag,kernels", [("fp32", True, "onednn"), ("fp32", False, "default"),
                                                ("bf16", True, "default")])
def test_backbone_uses_onednn_for_fp32_on_the_cpu(dtype, flag, kernels):
    bb = load_backbone("test_tiny", device="cpu", dtype=dtype, onednn=flag)
    assert bb.linear_kernels == kernels
    assert (type(bb.vit.blocks[0].attn.qkv) is onednn.OneDnnLinear) == (kernels == "onednn")


def test_backbone_tokens_do_not_depend_on_the_kernels():
    x = torch.randn(2, 3, 70, 56, generator=torch.Generator().manual_seed(1))
    fast = load_backbone("test_tiny", device="cpu", dtype="fp32").encode(x)
    plain = load_backbone("test_tiny", device="cpu", dtype="fp32", onednn=False).encode(x)
    assert _relative_diff(fast.patches, plain.patches) < 1e-5
    assert _relative_diff(fast.cls, plain.cls) < 1e-5

"""Our DINOv2 ViT (retrieval/backbone/vit.py) against timm's VisionTransformer, which the project ran
before it: same state dict, same tokens, bit for bit (fp32, PyTorch's default kernels).

timm is a test dependency only. For the register models timm's own `forward_features` (with
`dynamic_img_size`) applies the same position rule as the official code, so it is the whole
reference; for the original models it uses another rule away from 518 px (docs/backbone.md), so
there the reference is timm's patch embedding, blocks and norm around our interpolation, which
tests/test_fidelity.py checks against Meta's code.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from retrieval import load_backbone
from retrieval.backbone import interpolate_pos_embed, registry
from retrieval.backbone import vit as V

SIZES = [(518, 518), (224, 308)]


def _timm():  # noqa: ANN202
    """timm, imported by the tests that compare with it: with torchvision it costs about 3 s of CPU,
    so those tests carry the fidelity marker and the fast run (README, Development) never imports it."""
    return pytest.importorskip("timm", reason="timm is a test dependency: pip install -e '.[test]'")


def _trained_like(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Random values with the spread of trained weights (timm's init leaves LayerScale at 1e-5, every
    block near the identity, which would hide a wrong block)."""
    out = {}
    for name, v in sd.items():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if name.endswith("gamma"):
            out[name] = torch.rand(v.shape, generator=g) * 0.9 + 0.1
        elif name in ("pos_embed", "cls_token", "reg_token"):
            out[name] = torch.randn(v.shape, generator=g) * 0.5
        elif "norm" in name and name.endswith("weight"):
            out[name] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        elif name.endswith("bias"):
            out[name] = 0.02 * torch.randn(v.shape, generator=g)
        else:
            out[name] = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
    return out


@pytest.fixture(scope="module", params=["dinov2_vits14", "dinov2_vits14_reg"])
def pair(request, tmp_path_factory):
    arch = registry()[request.param]
    ref = _timm().create_model(arch.timm_name, pretrained=False, img_size=518, num_classes=0, dynamic_img_size=True)
    sd = _trained_like(ref.state_dict())
    ref.load_state_dict(sd)
    assert all(b.attn.fused_attn for b in ref.blocks)  # timm's default: scaled_dot_product_attention
    path = tmp_path_factory.mktemp("timm") / "timm_layout.pth"
    torch.save(sd, path)  # timm's key layout, as a .pth
    ours = load_backbone(arch.name, weights=path, device="cpu", dtype="fp32", onednn=False)
    assert ours.linear_kernels == "default"
    return ref.eval(), ours


def _timm_tokens(ref, x: torch.Tensor, *, registers: int) -> torch.Tensor:
    with torch.inference_mode():
        if registers or x.shape[-2:] == (518, 518):
            return ref.forward_features(x)
        grid = (x.shape[-2] // 14, x.shape[-1] // 14)
        t = ref.patch_embed(x).flatten(1, 2)  # dynamic_img_size: NHWC out of the patch embedding
        pos = torch.cat([ref.pos_embed[:, :1], interpolate_pos_embed(ref.pos_embed[:, 1:], grid, antialias=False)], 1)
        t = torch.cat([ref.cls_token.expand(len(x), -1, -1), t], dim=1) + pos
        return ref.norm(ref.blocks(t))


@pytest.mark.fidelity
@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_tokens_equal_timm_bit_for_bit(pair, hw):
    ref, ours = pair
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(hw[1]))
    want = _timm_tokens(ref, x, registers=ours.num_registers)
    got = ours.encode(x)
    assert torch.equal(got.cls, want[:, 0])
    assert torch.equal(got.patches, want[:, 1 + ours.num_registers:])
    assert want.abs().max() > 1  # values of trained-like spread, not near-identity blocks


@pytest.mark.fidelity
def test_swiglu_equals_timm_and_the_official_width():
    dim = 48
    hidden = V.swiglu_hidden(dim)
    assert V.swiglu_hidden(1536) == 4096  # ViT-g: the official SwiGLUFFNFused width
    ref = _timm().layers.SwiGLUPacked(in_features=dim, hidden_features=2 * hidden).eval()
    ours = V.SwiGLU(dim, hidden).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(_trained_like(ref.state_dict()))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, dim)
    with torch.inference_mode():
        assert torch.equal(ours(x), ref(x))


@pytest.mark.fidelity
@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vitg14_reg"])
def test_key_layout_is_timms(name):
    arch = registry()[name]
    ours = V.build_vit(arch, init=False)
    with torch.device("meta"):
        ref = _timm().create_model(arch.timm_name, pretrained=False, img_size=518, num_classes=0)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_checkpoint_models_are_built_empty(tmp_path, monkeypatch):
    """No random init is computed for a model whose weights come from a file."""
    arch = registry()["dinov2_vits14_reg"]
    empty = V.build_vit(arch, init=False)
    assert all(p.device.type == "meta" for p in empty.parameters())

    def never(*a, **k):
        raise AssertionError("a checkpoint's model was initialised")

    sd = _trained_like({k: torch.empty(v.shape) for k, v in empty.state_dict().items()})
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    monkeypatch.setattr(V, "init_random", never)
    bb = load_backbone(arch.name, weights=path, device="cpu")
    assert all(p.device.type == "cpu" for p in bb.parameters())
    assert torch.equal(bb.vit.pos_embed, sd["pos_embed"])


def test_tiny_init_keeps_timms_character():
    vit = load_backbone("test_tiny", onednn=False).vit
    for block in vit.blocks:
        assert torch.equal(block.ls1.gamma, torch.full((32,), 1e-5)) and torch.equal(block.ls2.gamma, block.ls1.gamma)
        w = block.attn.qkv.weight
        assert 0.018 < w.std() < 0.022 and w.abs().max() < 0.2  # timm's trunc_normal_(std=0.02): cut at +-2, not 2 std
        assert not block.attn.qkv.bias.any()
    assert vit.cls_token.abs().max() < 1e-4
    bound = 1 / math.sqrt(3 * 14 * 14)
    assert vit.patch_embed.proj.weight.abs().max() <= bound and vit.patch_embed.proj.weight.std() > bound / 3

"""DINOv3 tokens equal Meta's `forward_features` with the same weights (random, official key layout).

Reference: facebookresearch/dinov3 at commit 6876159a11b4df116f30f667f8c9888617df0751, vendored
unchanged under tests/reference/dinov3/ (tests/dinov3_reference.py builds each model through
Meta's own hub factory). Tolerance per the issue: max |ours - official| <= 2e-5 * max |official|,
fp32, class and patch tokens after the final norm, at 224x224, 448x336, 512x512 and 250x330 (not a
multiple of 16: Meta's patch convolution drops the remainder).

S and B at full depth (B at 512x512 too); each other block type at reduced size, with Meta's
settings otherwise: S+ and H+ (SwiGLU, align 8) at 2 blocks, full width; the 7B (no qkv bias,
SwiGLU aligned to 64, its untied `local_cls_norm`) at 2 blocks and width 512 with 4 heads, keeping
its head size of 128 (so its 32 RoPE periods) and its FFN ratio 3.

The comparisons carry the `fidelity` marker (the fast run leaves them out, README's Development);
test_backbone_v3 keeps cheaper ones against Meta at 2 blocks in it.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from retrieval.backbone import registry
from retrieval.backbone import weights as W
from retrieval.backbone.model import Backbone
from retrieval.backbone.registry import Arch
from retrieval.backbone.vit3 import Rope, build_vit3, default_periods

from .dinov3_reference import COMMIT, official_model, official_state_dict, official_tokens

assert COMMIT == "6876159a11b4df116f30f667f8c9888617df0751"
SIZES = [(224, 224), (448, 336), (512, 512), (250, 330)]
TOL = 2e-5
# name -> (arguments replacing Meta's factory values, the same reduction of our Arch)
REDUCED = {
    "dinov3_vits16": ({}, {}),
    "dinov3_vitb16": ({}, {}),
    "dinov3_vits16plus": ({"depth": 2}, {"depth": 2}),
    "dinov3_vith16plus": ({"depth": 2}, {"depth": 2}),
    "dinov3_vit7b16": ({"depth": 2, "embed_dim": 512, "num_heads": 4}, {"depth": 2, "dim": 512, "heads": 4}),
}


def load_ours(arch: Arch, path, dtype: torch.dtype = torch.float32) -> Backbone:
    """load_backbone's steps for an Arch that is not in the registry (a reduced one)."""
    vit = build_vit3(arch, init=False)
    W.load_into(vit, W.read_checkpoint(path, arch), arch, str(path))
    return Backbone(arch, vit, device=torch.device("cpu"), dtype=dtype, weights_id="test")


def make_pair(name: str, tmp_path_factory, seed: int = 3):
    meta_args, our_args = REDUCED[name]
    ref = official_model(name, seed=seed, **meta_args)
    sd = official_state_dict(ref)  # periods in bf16, as the official files hold them
    ref.load_state_dict(sd)
    path = tmp_path_factory.mktemp("ckpt") / f"{name}.pth"
    torch.save(sd, path)
    arch = dataclasses.replace(registry()[name], **our_args)
    return ref, load_ours(arch, path)


def images(hw: tuple[int, int], *, faint: bool = False, batch: int = 1) -> torch.Tensor:
    """Normalised noise images; faint: a flat grey picture with faint noise (std 0.02), whose patch
    embeddings are small, so that the first LayerNorm's eps shows in the tokens."""
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(hw[0] * 1000 + hw[1]))
    return 0.02 * x if faint else x


def rel_diff(ref, ours, x: torch.Tensor) -> float:
    """max |ours - Meta's| / max |Meta's| over class and patch tokens."""
    cls_ref, patches_ref = official_tokens(ref, x)
    out = ours.encode(x)
    assert out.grid == (x.shape[2] // 16, x.shape[3] // 16)
    assert out.patches.shape == patches_ref.shape and out.cls.shape == cls_ref.shape
    scale = max(cls_ref.abs().max().item(), patches_ref.abs().max().item())
    diff = max((out.cls - cls_ref).abs().max().item(), (out.patches - patches_ref).abs().max().item())
    return diff / scale


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (Meta's model, ours), built on first use; ViT-S kept (the controls use it), others
    dropped when the next one is built."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    built: dict[str, tuple] = {}

    def get(name: str):
        if name not in built:
            for other in [k for k in built if k != "dinov3_vits16"]:
                del built[other]
            built[name] = make_pair(name, tmp_path_factory)
        return built[name]

    return get


CASES = [(name, hw) for name in REDUCED for hw in SIZES if name != "dinov3_vith16plus" or hw in SIZES[::3]]


@pytest.mark.fidelity
@pytest.mark.parametrize("name,hw", CASES, ids=[f"{n.removeprefix('dinov3_')}-{h}x{w}" for n, (h, w) in CASES])
def test_tokens_match_meta(pairs, name, hw):
    """H+ at 224 and 250x330 only: its blocks are S+'s type (SwiGLU, align 8) at a larger width."""
    ref, ours = pairs(name)
    assert ours.linear_kernels == ("onednn" if torch.backends.mkldnn.is_available() else "default")
    assert rel_diff(ref, ours, images(hw)) <= TOL


@pytest.mark.fidelity
@pytest.mark.parametrize("name", list(REDUCED))
def test_faint_image_batch_matches_meta(pairs, name):
    ref, ours = pairs(name)
    x = torch.cat([images((224, 224)), images((224, 224), faint=True)])
    assert rel_diff(ref, ours, x) <= TOL


def test_periods_are_metas_bf16_training_values():
    """What files without the buffer (timm's, HF's) get: Meta's own bf16 computation, bit for bit."""
    from .dinov3_reference import official_periods

    for head_dim in (64, 128):
        assert torch.equal(default_periods(head_dim), official_periods(head_dim).float())
        assert not torch.equal(default_periods(head_dim), default_periods(head_dim, dtype=torch.float32))


@pytest.mark.fidelity
def test_control_fp32_periods_break_it(pairs):
    ref, ours = pairs("dinov3_vits16")
    periods = ours.vit.rope_embed.periods
    saved = periods.clone()
    try:
        periods.copy_(default_periods(periods.numel() * 4, dtype=torch.float32))  # timm's and HF's recomputation
        assert rel_diff(ref, ours, images((224, 224))) > TOL
    finally:
        periods.copy_(saved)


class SwappedRope(Rope):
    """Columns' angles where the rows' go and back: RoPE's axes swapped."""

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        sin, cos = super().forward(h, w)
        n, d = sin.shape
        order = [1, 0, 3, 2]
        return sin.view(n, 4, d // 4)[:, order].reshape(n, d), cos.view(n, 4, d // 4)[:, order].reshape(n, d)


@pytest.mark.fidelity
def test_control_swapped_rope_axes_break_it(pairs):
    ref, ours = pairs("dinov3_vits16")
    rope = ours.vit.rope_embed
    swapped = SwappedRope(rope.periods.numel() * 4)
    swapped.periods = rope.periods
    ours.vit.rope_embed = swapped
    try:
        assert rel_diff(ref, ours, images((448, 336))) > TOL
    finally:
        ours.vit.rope_embed = rope


@pytest.mark.fidelity
def test_control_dinov2_eps_breaks_it(pairs):
    ref, ours = pairs("dinov3_vits16")
    norms = [m for m in ours.vit.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    try:
        for m in norms:
            m.eps = 1e-6  # DINOv2's
        assert rel_diff(ref, ours, images((224, 224), faint=True)) > TOL
    finally:
        for m in norms:
            m.eps = 1e-5


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RETRIEVAL_SLOW") != "1", reason="full-depth ViT-L/H+: set RETRIEVAL_SLOW=1")
@pytest.mark.parametrize("name", ["dinov3_vitl16", "dinov3_vith16plus"])
def test_full_depth_large_models_match_meta(name, tmp_path_factory, monkeypatch):
    monkeypatch.setitem(REDUCED, name, ({}, {}))
    ref, ours = make_pair(name, tmp_path_factory)
    for hw in [(224, 224), (250, 330)]:
        assert rel_diff(ref, ours, images(hw)) <= TOL

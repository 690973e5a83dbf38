from __future__ import annotations

import time

import pytest
import torch

from retrieval import UnknownBackboneError, UsageError, WeightsError, backbone_names, load_backbone
from retrieval.backbone import interpolate_pos_embed, registry
from retrieval.backbone import weights as W



def test_registry_names():
    names = backbone_names()
    for size in "sblg":
        assert f"dinov2_vit{size}14" in names and f"dinov2_vit{size}14_reg" in names
    assert "test_tiny" in names
    assert registry()["dinov2_vitb14_reg"].url.endswith("/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth")
    assert registry()["dinov2_vitg14"].checkpoint_file == "dinov2_vitg14_pretrain.pth"


def test_unknown_name_lists_valid():
    with pytest.raises(UnknownBackboneError) as info:
        load_backbone("dinov9_vits16")
    assert "dinov2_vits14_reg" in str(info.value) and "test_tiny" in str(info.value)
    assert isinstance(info.value, UsageError)  # `except UsageError` (and the CLI's exit 2) covers it


def test_tiny_encode_shapes(tiny):
    out = tiny.encode(torch.randn(3, 3, 224, 308))
    assert out.grid == (16, 22)
    assert out.cls.shape == (3, tiny.dim) and out.patches.shape == (3, 16 * 22, tiny.dim)
    assert tiny.patch_size == 14 and len(tiny.mean) == 3 and len(tiny.std) == 3


def test_tiny_is_deterministic_and_warns(caplog):
    x = torch.randn(1, 3, 112, 140)
    with caplog.at_level("WARNING"):
        a = load_backbone("test_tiny").encode(x)
    b = load_backbone("test_tiny").encode(x)
    assert torch.equal(a.patches, b.patches)
    assert "random weights" in caplog.text


def test_tiny_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backbone("test_tiny")
    assert torch.equal(torch.rand(3), expected)


def test_batch_independence(tiny):
    x = torch.randn(4, 3, 98, 126)
    together = tiny.encode(x)
    alone = tiny.encode(x[2:3])
    torch.testing.assert_close(together.patches[2:3], alone.patches, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 3, 225, 224), (1, 3, 224, 230), (1, 1, 224, 224), (3, 224, 224)])
def test_bad_input_shape(tiny, shape):
    with pytest.raises(ValueError, match="patch size|expected a float tensor"):
        tiny.encode(torch.zeros(shape))


def test_bf16_autocast_close_to_fp32():
    x = torch.randn(2, 3, 224, 224)
    a = load_backbone("test_tiny", dtype="fp32").encode(x)
    b = load_backbone("test_tiny", dtype="bf16").encode(x)
    assert b.patches.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a.patches.flatten(0, 1), b.patches.flatten(0, 1), dim=-1)
    assert cos.min() > 0.98
    assert not torch.equal(a.patches, b.patches)  # autocast really ran in bf16


def test_unknown_dtype():
    with pytest.raises(ValueError, match="bf16"):
        load_backbone("test_tiny", dtype="int8")


def test_pos_embed_identity_at_pretrain_grid():
    pos = torch.randn(1, 37 * 37, 8)
    assert interpolate_pos_embed(pos, (37, 37), antialias=False) is pos


def test_pos_embed_rules_differ():
    pos = torch.randn(1, 37 * 37, 8)
    a = interpolate_pos_embed(pos, (16, 16), antialias=False)
    b = interpolate_pos_embed(pos, (16, 16), antialias=True)
    assert a.shape == b.shape == (1, 256, 8)
    assert (a - b).abs().max() > 1e-2


def test_pos_embed_constant_field_stays_constant():
    pos = torch.full((1, 37 * 37, 4), 0.25)
    for rule in (False, True):
        out = interpolate_pos_embed(pos, (23, 31), antialias=rule)
        torch.testing.assert_close(out, torch.full((1, 23 * 31, 4), 0.25))


# --- weights ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory, vits_state_dict) -> str:
    path = tmp_path_factory.mktemp("w") / "dinov2_vits14_pretrain.pth"
    torch.save(vits_state_dict(), path)
    return str(path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found.*dinov2_vits14_pretrain.pth"):
        load_backbone("dinov2_vits14", weights=tmp_path / "nope.pth")


def test_truncated_weights_file(small_ckpt, tmp_path):
    data = open(small_ckpt, "rb").read()
    bad = tmp_path / "cut.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov2_vits14", weights=bad)
    msg = str(info.value)
    assert "cut.pth" in msg and "truncated" in msg and "dinov2_vits14_pretrain.pth" in msg and "\n" not in msg


def test_mismatched_weights_name_both_variants(small_ckpt):
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov2_vitb14", weights=small_ckpt)
    msg = str(info.value)
    assert "dinov2_vitb14" in msg and "dim 384" in msg and "dinov2_vitb14_pretrain.pth" in msg


def test_registers_mismatch(small_ckpt):
    with pytest.raises(WeightsError, match="no registers"):
        load_backbone("dinov2_vits14_reg", weights=small_ckpt)


def test_safetensors_equals_pth(small_ckpt, tmp_path):
    from safetensors.torch import save_file

    sd = torch.load(small_ckpt, weights_only=True)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    x = torch.randn(1, 3, 224, 168)
    a = load_backbone("dinov2_vits14", weights=small_ckpt).encode(x)
    b = load_backbone("dinov2_vits14", weights=st).encode(x)
    assert torch.equal(a.patches, b.patches)


def test_register_layout_folds_class_position(tmp_path, vits_state_dict):
    sd = vits_state_dict(registers=4)
    p = tmp_path / "r.pth"
    torch.save(sd, p)
    bb = load_backbone("dinov2_vits14_reg", weights=p)
    torch.testing.assert_close(bb.vit.cls_token, sd["cls_token"] + sd["pos_embed"][:, :1])
    assert bb.num_registers == 4
    out = bb.encode(torch.randn(1, 3, 224, 224))
    assert out.patches.shape == (1, 256, 384)


def test_weights_id_is_file_hash(small_ckpt):
    bb = load_backbone("dinov2_vits14", weights=small_ckpt)
    assert bb.weights_id == "sha256:" + W.file_sha256(small_ckpt)


def test_cached_official_file_is_used_without_network(small_ckpt, tmp_path):
    import shutil

    arch = registry()["dinov2_vits14"]
    shutil.copy(small_ckpt, tmp_path / arch.checkpoint_file)
    bb = load_backbone("dinov2_vits14", cache_dir=tmp_path)
    assert bb.weights_id == "sha256:" + W.file_sha256(small_ckpt)


def test_offline_download_fails_fast_with_instructions(tmp_path):
    arch = registry()["dinov2_vits14"]
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        W.fetch_official(arch, cache_dir=tmp_path, url="http://127.0.0.1:9/dinov2_vits14_pretrain.pth", timeout=5)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert arch.url in msg and str(tmp_path / arch.checkpoint_file) in msg and "--weights" in msg
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_timm_layout_safetensors(tmp_path, vits_state_dict):
    from safetensors.torch import save_file

    sd = vits_state_dict(registers=4)
    p = tmp_path / "r.pth"
    torch.save(sd, p)
    official = load_backbone("dinov2_vits14_reg", weights=p)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in official.vit.state_dict().items()}, str(st))  # timm's key layout
    timm_loaded = load_backbone("dinov2_vits14_reg", weights=st)
    x = torch.randn(1, 3, 126, 168)
    assert torch.equal(official.encode(x).patches, timm_loaded.encode(x).patches)


def test_auto_dtype_is_bf16_only_where_computed_natively(monkeypatch):
    import torch

    from retrieval.backbone import native_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, want in (((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert native_dtype(torch.device("cuda:1")) == want, capability
    assert native_dtype(torch.device("mps")) == "fp32"

"""DINOv3 backbones: the random test model, weights in three key layouts, timm and Hugging Face
transformers as second references, gated weights by file or URL, one-line mismatch errors."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from retrieval import load_backbone
from retrieval.backbone import registry
from retrieval.backbone import weights as W
from retrieval.backbone import weights3 as W3
from retrieval.backbone.vit3 import default_periods
from retrieval.cli import app
from retrieval.errors import WeightsError

from .dinov3_reference import official_model, official_state_dict, official_tokens
from .test_fidelity_v3 import REDUCED, TOL, images, load_ours, rel_diff


def _official_file(name: str, tmp_path: Path, seed: int = 11, **overrides) -> tuple[torch.nn.Module, Path]:
    ref = official_model(name, seed=seed, **(overrides or REDUCED[name][0]))
    sd = official_state_dict(ref)
    ref.load_state_dict(sd)
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    return ref, path


def _arch(name: str):
    return dataclasses.replace(registry()[name], **REDUCED[name][1])


@pytest.fixture(scope="module")
def s_file(tmp_path_factory):
    """Meta's ViT-S (2 blocks, otherwise its hub settings) in the official layout."""
    tmp = tmp_path_factory.mktemp("s")
    ref = official_model("dinov3_vits16", seed=4, depth=2)
    sd = official_state_dict(ref)
    ref.load_state_dict(sd)
    torch.save(sd, tmp / "s.pth")
    return ref, tmp / "s.pth", dataclasses.replace(registry()["dinov3_vits16"], depth=2)


def test_registry_rows():
    archs = registry()
    for name, file_hash in [("dinov3_vits16", "08c60483"), ("dinov3_vits16plus", "4057cbaa"),
                            ("dinov3_vitb16", "73cec8be"), ("dinov3_vitl16", "8aa4cbdd"),
                            ("dinov3_vith16plus", "7c1da9a5"), ("dinov3_vit7b16", "a955f4ea")]:
        arch = archs[name]
        assert arch.checkpoint_file == f"{name}_pretrain_lvd1689m-{file_hash}.pth"
        assert arch.url is None and arch.patch_size == 16 and arch.num_registers == 4 and arch.eps == 1e-5
        assert "DINOv3 License" in arch.licence
    assert [archs[n].swiglu for n in ("dinov3_vits16", "dinov3_vits16plus", "dinov3_vith16plus", "dinov3_vit7b16")] \
        == [False, True, True, True]
    assert archs["dinov3_vit7b16"].swiglu_align == 64 and not archs["dinov3_vit7b16"].qkv_bias
    assert archs["dinov2_vits14"].patch_size == 14 and archs["dinov2_vits14"].licence == "Apache-2.0"


def test_models_command_lists_dinov3_with_file_and_licence():
    out = CliRunner().invoke(app, ["models"]).output
    line = next(x for x in out.splitlines() if x.startswith("dinov3_vitb16 "))
    assert "dim   768" in line and "storage 4" in line and "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth" in line
    assert "DINOv3 License" in line and "dinov3-downloads" in line
    assert "Apache-2.0" in next(x for x in out.splitlines() if x.startswith("dinov2_vitb14 "))


def test_tiny_v3_shapes_and_any_input_size():
    bb = load_backbone("test_tiny_v3", device="cpu")
    assert bb.patch_size == 16 and bb.num_registers == 4 and bb.weights_id.startswith("random:test_tiny_v3")
    out = bb.encode(torch.randn(2, 3, 70, 100))  # not multiples of 16: the remainder is dropped, as Meta's code does
    assert out.grid == (4, 6) and out.patches.shape == (2, 24, 32) and out.cls.shape == (2, 32)
    x = torch.randn(1, 3, 70, 100)
    assert torch.equal(bb.encode(x).patches, bb.encode(x[..., :64, :96]).patches)
    with pytest.raises(ValueError, match="patch size 16"):
        bb.encode(torch.randn(1, 3, 15, 64))


def test_k_bias_mask_is_applied_at_load():
    bias = torch.arange(1.0, 10.0)
    mask = torch.tensor([1.0, 1, 1, 0, 0, 0, 1, 1, 1])
    out = W3.official_to_ours({"blocks.0.attn.qkv.bias": bias, "blocks.0.attn.qkv.bias_mask": mask,
                               "mask_token": torch.zeros(1, 3), "local_cls_norm.weight": torch.ones(3)})
    assert list(out) == ["blocks.0.attn.qkv.bias"] and out["blocks.0.attn.qkv.bias"].tolist() == [1, 2, 3, 0, 0, 0,
                                                                                                      7, 8, 9]


@pytest.mark.parametrize("name", ["dinov3_vits16plus", "dinov3_vit7b16"])
def test_timm_layout_round_trip_gives_identical_tokens(name, tmp_path):
    """official -> timm's layout (safetensors) -> ours: the same tokens as from the official file."""
    _, path = _official_file(name, tmp_path)
    arch = _arch(name)
    sd = W.read_checkpoint(path, arch)
    st = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in W3.official_to_timm(sd, qkv_bias=arch.qkv_bias).items()}, str(st))
    x = images((64, 80))
    assert torch.equal(load_ours(arch, path).encode(x).patches, load_ours(arch, st).encode(x).patches)


def test_timm_file_without_qkv_bias_reads_as_a_zero_bias(s_file, tmp_path):
    """timm's models without `_qkvb` carry no q/v bias: read as zero, the same sums."""
    _, path, arch = s_file
    sd = W.read_checkpoint(path, arch)
    for k in [k for k in sd if k.endswith("qkv.bias")]:
        sd[k] = torch.zeros_like(sd[k])
    torch.save(sd, tmp_path / "zero.pth")
    st = tmp_path / "timm.safetensors"
    timm_sd = W3.official_to_timm(sd, qkv_bias=False)
    assert not any("bias" in k for k in timm_sd if ".attn.qkv" in k or "q_bias" in k)
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(st))
    x = images((48, 64))
    assert torch.equal(load_ours(arch, tmp_path / "zero.pth").encode(x).patches, load_ours(arch, st).encode(x).patches)


def official_to_hf(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Meta's layout renamed to transformers' (`layer.N.` as 4.56 saves it, `model.layer.N.` as 5.x
    names it with prefix="model."): the synthetic HF file."""
    out: dict[str, torch.Tensor] = {}
    top = {v: k for k, v in W3._HF_TOP.items()}
    swiglu = any(".mlp.w1." in k for k in sd)
    for k, v in W3.official_to_ours(sd).items():
        if k in top:
            out[top[k]] = v
            continue
        if not k.startswith("blocks."):
            if k != "rope_embed.periods":
                out[k] = v
            continue
        _, i, rest = k.split(".", 2)
        if rest.startswith("attn.qkv."):
            for part, t in zip("qkv", v.chunk(3)):
                if not (rest.endswith("bias") and part == "k"):
                    out[f"{prefix}layer.{i}.attention.{part}_proj.{rest.rsplit('.', 1)[1]}"] = t
            continue
        for old, new in [("attn.proj.", "attention.o_proj."), ("ls1.gamma", "layer_scale1.lambda1"),
                         ("ls2.gamma", "layer_scale2.lambda1"), ("mlp.w1.", "mlp.gate_proj."),
                         ("mlp.w2.", "mlp.up_proj."), ("mlp.w3.", "mlp.down_proj."),
                         ("mlp.fc1.", "mlp.up_proj."), ("mlp.fc2.", "mlp.down_proj.")]:
            rest = rest.replace(old, new)
        out[f"{prefix}layer.{i}.{rest}"] = v
    assert swiglu == any("gate_proj" in k for k in out)
    return out


@pytest.mark.parametrize("prefix", ["", "model."])
def test_hf_layout_round_trip_gives_identical_tokens(s_file, tmp_path, prefix):
    _, path, arch = s_file
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in official_to_hf(W.read_checkpoint(path, arch), prefix).items()}, str(st))
    x = images((64, 80))
    assert torch.equal(load_ours(arch, path).encode(x).patches, load_ours(arch, st).encode(x).patches)


# --- timm and transformers as second references ---------------------------------------------------

def _timm_pair(name: str, timm_name: str, tmp_path: Path, **timm_args):
    timm = pytest.importorskip("timm")
    _, path = _official_file(name, tmp_path)
    arch = _arch(name)
    sd = W3.official_to_timm(W.read_checkpoint(path, arch), qkv_bias=arch.qkv_bias)
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_args).eval()
    model.load_state_dict(sd, strict=True)
    st = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("rope")}, str(st))
    ours = load_ours(arch, st)
    return model, ours


def _timm_diff(model, ours, x: torch.Tensor) -> float:
    with torch.inference_mode():
        ref = model.forward_features(x)  # after the final norm: class, 4 registers, patches
    out = ours.encode(x)
    scale = ref.abs().max().item()
    return max((out.cls - ref[:, 0]).abs().max().item(), (out.patches - ref[:, 5:]).abs().max().item()) / scale


@pytest.mark.fidelity  # ViT-S at full depth against timm: left out of the fast run
@pytest.mark.parametrize("name,timm_name,args", [
    ("dinov3_vits16", "vit_small_patch16_dinov3_qkvb", {}),
    ("dinov3_vits16plus", "vit_small_plus_patch16_dinov3_qkvb", {"depth": 2}),
    ("dinov3_vit7b16", "vit_7b_patch16_dinov3", {"depth": 2, "embed_dim": 512, "num_heads": 4}),
])
def test_equals_timm_after_conversion(name, timm_name, args, tmp_path):
    """timm (>= 1.0.20) recomputes the periods in fp32: with timm's periods ours equals timm; with
    the file's bf16 ones (what loading timm's file gives) ours equals Meta and differs from timm."""
    model, ours = _timm_pair(name, timm_name, tmp_path, **args)
    x = images((224, 224))
    bf16_gap = _timm_diff(model, ours, x)
    ours.vit.rope_embed.periods.copy_(model.rope.periods)
    assert torch.equal(model.rope.periods, default_periods(ours.vit.rope_embed.periods.numel() * 4,
                                                           dtype=torch.float32))
    assert _timm_diff(model, ours, x) <= TOL < bf16_gap
    assert _timm_diff(model, ours, images((448, 336))) <= TOL  # timm refuses sizes that are not multiples of 16


def _hf():
    pytest.importorskip("transformers", reason="transformers not installed (optional: the HF reference)")
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    return DINOv3ViTConfig, DINOv3ViTModel


@pytest.mark.parametrize("gated", [False, True])
def test_equals_transformers_after_conversion(gated, tmp_path):
    config_cls, model_cls = _hf()
    torch.manual_seed(0)
    config = config_cls(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, num_register_tokens=4,
                        intermediate_size=1536, use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
                        layerscale_value=0.7)  # the hub configs of S+ and H+ have silu
    hf = model_cls(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(st))
    base = registry()["dinov3_vits16plus" if gated else "dinov3_vits16"]
    arch = dataclasses.replace(base, depth=2, ffn_ratio=6.0 if gated else 4.0)
    ours = load_ours(arch, st)
    ours.vit.rope_embed.periods.copy_(1 / hf.rope_embeddings.inv_freq)  # transformers' fp32 periods
    for hw in [(224, 224), (250, 330)]:
        x = images(hw)
        with torch.inference_mode():
            ref = hf(pixel_values=x).last_hidden_state
        out = ours.encode(x)
        scale = ref.abs().max().item()
        diff = max((out.cls - ref[:, 0]).abs().max().item(), (out.patches - ref[:, 5:]).abs().max().item())
        assert diff / scale <= TOL


# --- weights: gated files, URLs, mismatches -----------------------------------------------------

def test_no_weights_for_dinov3_says_how_to_get_them(tmp_path):
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov3_vitb16", cache_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "gated" in msg and "dinov3-downloads" in msg and "--weights https://" in msg
    assert "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth" in msg and list(tmp_path.iterdir()) == []
    assert "vit_base_patch16_dinov3.lvd1689m" in msg and "facebook/dinov3-vitb16-pretrain-lvd1689m" in msg


def test_cached_dinov3_file_is_used(s_file, tmp_path, monkeypatch):
    ref, path, arch = s_file
    monkeypatch.setattr("retrieval.backbone.model.registry", lambda: {"dinov3_vits16": arch})
    (tmp_path / arch.checkpoint_file).write_bytes(path.read_bytes())
    bb = load_backbone("dinov3_vits16", cache_dir=tmp_path, device="cpu")
    assert rel_diff(ref, bb, images((64, 48))) <= TOL


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_weights_url_is_downloaded_once_into_the_cache(s_file, http_dir, tmp_path, monkeypatch):
    ref, path, arch = s_file
    served, base = http_dir
    monkeypatch.setattr("retrieval.backbone.model.registry", lambda: {"dinov3_vits16": arch})
    (served / arch.checkpoint_file).write_bytes(path.read_bytes())
    url = f"{base}/{arch.checkpoint_file}?Signature=abc&Expires=1"  # as Meta's signed URLs look
    cache = tmp_path / "cache"
    bb = load_backbone("dinov3_vits16", weights=url, cache_dir=cache, device="cpu")
    assert [p.name for p in cache.iterdir()] == [arch.checkpoint_file]
    assert rel_diff(ref, bb, images((64, 48))) <= TOL
    (served / arch.checkpoint_file).unlink()  # gone from the server: the cached copy serves
    again = load_backbone("dinov3_vits16", weights=Path(url), cache_dir=cache, device="cpu")  # a CLI Path: one slash
    assert again.weights_id == bb.weights_id == W.file_id(cache / arch.checkpoint_file)


def test_unreachable_url_is_one_line_naming_it(tmp_path):
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov3_vits16", weights="http://127.0.0.1:9/x/dinov3_vits16.pth", cache_dir=tmp_path)
    assert "\n" not in str(info.value) and "http://127.0.0.1:9/x/dinov3_vits16.pth" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_dinov2_file_for_a_dinov3_name_names_both(tmp_path, vits_state_dict):
    p = tmp_path / "v2.pth"
    torch.save(vits_state_dict(registers=4), p)
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov3_vits16", weights=p)
    msg = str(info.value)
    assert "\n" not in msg and "look like DINOv2 dim 384" in msg and "patch 14" in msg
    assert "dinov3_vits16 (dim 384, 12 blocks, 4 storage tokens, patch 16)" in msg
    assert "dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in msg


def test_dinov3_file_for_a_dinov2_name_names_both(s_file):
    _, path, _ = s_file
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov2_vits14_reg", weights=path)
    msg = str(info.value)
    assert "\n" not in msg and "look like DINOv3 dim 384, 2 blocks, 4 storage tokens, patch 16" in msg


def test_b_file_for_an_s_name_names_both(tmp_path):
    _, path = _official_file("dinov3_vitb16", tmp_path, depth=1)
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov3_vits16", weights=path)
    msg = str(info.value)
    assert "\n" not in msg and "look like DINOv3 dim 768, 1 blocks" in msg and "dinov3_vits16 (dim 384" in msg


def test_truncated_file_is_one_line(s_file, tmp_path):
    _, path, _ = s_file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError) as info:
        load_backbone("dinov3_vits16", weights=cut)
    assert "\n" not in str(info.value) and "truncated" in str(info.value)


def test_official_tokens_helper_sees_the_file(s_file):
    """The reference really uses the file's values (not its own init): a changed storage token moves it."""
    ref, _, _ = s_file
    x = images((64, 64))
    before = official_tokens(ref, x)[1].clone()
    with torch.no_grad():
        ref.storage_tokens.add_(1.0)
    try:
        assert not torch.allclose(before, official_tokens(ref, x)[1])
    finally:
        with torch.no_grad():
            ref.storage_tokens.sub_(1.0)


def test_weights_url_survives_the_cli_options(tmp_path):
    """`--weights https://...` through the CLI's Path option and cli_overrides: not made a local path."""
    from retrieval.backbone.weights import as_url
    from retrieval.config import cli_overrides

    url = "https://example.org/dinov3/dinov3_vits16_pretrain_lvd1689m-08c60483.pth?Signature=x"
    kept = cli_overrides(weights=Path(url))["backbone"]["weights"]
    assert as_url(kept) == url
    local = cli_overrides(weights=Path("w.pth"))["backbone"]["weights"]
    assert Path(local).is_absolute() and as_url(local) is None


def test_bf16_autocast_tokens_stay_close_to_metas_fp32(s_file):
    """dtype=bf16 runs under autocast (RoPE kept in fp32 as upstream does) and returns fp32 tokens
    close to Meta's fp32 ones."""
    ref, path, arch = s_file
    bb = load_ours(arch, path, dtype=torch.bfloat16)
    x = images((96, 80))
    out = bb.encode(x)
    _, patches_ref = official_tokens(ref, x)
    assert out.patches.dtype == torch.float32 and out.grid == (6, 5)
    cos = torch.nn.functional.cosine_similarity(out.patches, patches_ref, dim=-1)
    assert cos.min() > 0.99

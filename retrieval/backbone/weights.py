"""Find, fetch, read and check DINOv2 and DINOv3 weights.

Official checkpoints are cached where `torch.hub.load_state_dict_from_url` keeps them
(`$TORCH_HOME/hub/checkpoints/`), so a file fetched by torch hub or by this project is
reused by both. A local file may be in the official key layout (`.pth` or safetensors)
or in timm's layout (safetensors from the timm hub repositories); DINOv3 files also in Hugging
Face transformers' layout (weights3.py converts them). DINOv3's official files are gated: Meta
e-mails signed URLs, so a DINOv3 file comes from `--weights FILE` or `--weights https://...`
(downloaded once into the same cache), never from a URL made up here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ..errors import WeightsError
from . import weights3
from .registry import DINOV3_REQUEST_PAGE, Arch

if TYPE_CHECKING:  # torch is imported where weights are read, not to hash a file
    import torch

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 20.0


def cache_path(arch: Arch, cache_dir: str | Path | None = None, *, file_name: str | None = None) -> Path:
    """Where the cache keeps `file_name` (default: the arch's official checkpoint file)."""
    name = file_name or arch.checkpoint_file
    if cache_dir is not None:
        return Path(cache_dir) / name
    import torch

    root = Path(torch.hub.get_dir()) / "checkpoints"
    return root / name


def as_url(weights: str | Path) -> str | None:
    """`weights` as an http(s) URL, or None for a file path. A URL that went through `Path` (a CLI
    option typed as a path) has lost one slash after the scheme; it is put back."""
    m = re.match(r"^(https?):/+(.+)$", str(weights))
    return f"{m.group(1)}://{m.group(2)}" if m else None


def fetch_url(arch: Arch, url: str, *, cache_dir: str | Path | None = None,
              timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The file at `url` (e.g. the signed URL Meta e-mails for DINOv3), downloaded once into the cache
    under the URL's own file name (query string left out), as torch hub names it."""
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise WeightsError(f"--weights {url}: the URL names no file; pass the checkpoint's URL or a local file")
    return fetch_official(arch, cache_dir=cache_dir, url=url, timeout=timeout, file_name=name)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_id(path: str | Path, cache: MutableMapping[str, str] | None = None) -> str:
    """"sha256:<hex>" of a weights file. With `cache`, keyed by (real path, size, mtime), a file
    hashed before is not read again (a ViT-g checkpoint is 4.4 GB: seconds per query otherwise)."""
    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"
    if cache is not None and key in cache:
        return cache[key]
    digest = "sha256:" + file_sha256(path)
    if cache is not None:
        cache[key] = digest
    return digest


def fetch_official(
    arch: Arch, *, cache_dir: str | Path | None = None, url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S,
    file_name: str | None = None,
) -> Path:
    """Path of the official checkpoint (or of `file_name` from `url`), downloading it once
    (atomically) if it is not cached. DINOv3 has no public URL: without `url`, a DINOv3 file that
    is not cached is an error saying how to get it."""
    dest = cache_path(arch, cache_dir, file_name=file_name)
    if dest.is_file():
        return dest
    if url is None and arch.url is None:
        raise WeightsError(
            f"no {arch.name} weights: Meta's DINOv3 files are gated; request access at "
            f"{DINOV3_REQUEST_PAGE}, then pass the URL Meta e-mails (--weights https://...) or the "
            f"downloaded {arch.checkpoint_file} (--weights FILE), or put that file at {dest}; the safetensors of "
            f"timm's {arch.timm_name}.lvd1689m or Hugging Face's {arch.hf_name} also load")
    official = arch.url if file_name is None else None  # by hand: the official file, or a --weights URL as given
    url = url or arch.url
    assert url is not None
    how_to = (
        f"download {official or url} on a machine with internet access and either put it at {dest} "
        f"or pass --weights PATH (Python: weights=PATH)"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            log.info("downloading %s weights from %s", arch.name, url)  # once it answers: offline is one line
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"no {arch.name} weights: cannot download {url} ({reason}); {how_to}") from e
    return dest


def read_checkpoint(path: str | Path, arch: Arch) -> dict[str, torch.Tensor]:
    """Read a .pth (weights_only) or safetensors file into a flat state dict."""
    import torch

    path = Path(path)
    expected = f"expected the official {arch.checkpoint_file} ({arch.where}) or a safetensors file of {arch.name}"
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; {expected}")
    sd: Any
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a damaged file
        raise WeightsError(f"weights file {path} is unreadable or truncated ({type(e).__name__}); {expected}") from e
    for key in ("model", "state_dict", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors; {expected}")
    return {re.sub(r"^(module\.|backbone\.)", "", k): v for k, v in sd.items()}


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{"


def describe_state_dict(sd: dict[str, torch.Tensor]) -> str:
    """Best guess at which variant a state dict (timm's or our layout) holds, for error messages."""
    cls = sd.get("cls_token")
    if cls is None:
        return "no DINOv2 or DINOv3 backbone (no cls_token)"
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    v3 = "storage_tokens" in sd or "rope_embed.periods" in sd
    regs = sd.get("storage_tokens", sd.get("register_tokens", sd.get("reg_token")))
    nreg = 0 if regs is None else int(regs.shape[1])
    what = "storage tokens" if v3 else "registers"
    reg = f"{nreg} {what}" if nreg else f"no {what}"
    proj = sd.get("patch_embed.proj.weight")
    patch = f", patch {int(proj.shape[-1])}" if proj is not None else ""
    ffn = ", SwiGLU" if any(".mlp.w1." in k or ".mlp.w12." in k for k in sd) else ""
    return f"{'DINOv3' if v3 else 'DINOv2'} dim {int(cls.shape[-1])}, {len(blocks)} blocks, {reg}{patch}{ffn}"


def is_official_layout(sd: dict[str, torch.Tensor]) -> bool:
    return "mask_token" in sd or "register_tokens" in sd or any(".mlp.w12." in k for k in sd)


def official_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the official key layout onto timm's VisionTransformer names, which our own ViT
    (vit.py) keeps: the "timm layout".

    timm's register models keep no position embedding for prefix tokens, so the class
    token's position embedding is folded into the class token (the same sum the official
    code computes on every forward pass).
    """
    out: dict[str, torch.Tensor] = {}
    sd = dict(sd)
    sd.pop("mask_token", None)
    if "register_tokens" in sd:
        out["reg_token"] = sd.pop("register_tokens")
        pos = sd.pop("pos_embed")
        out["cls_token"] = sd.pop("cls_token") + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    for k, v in sd.items():
        out[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = v
    return out


def load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], arch: Arch, source: str) -> None:
    """Check names and shapes, then load; a mismatch names both variants and the fix."""
    if weights3.layout(sd) is not None:  # a DINOv3 file, whatever the model: converted, so it is described as one
        sd = weights3.to_ours(sd, head_dim=arch.dim // arch.heads, qkv_bias=arch.qkv_bias)
    elif is_official_layout(sd):
        sd = official_to_timm(sd)
    target = model.state_dict()
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    wrong = sorted(k for k in set(target) & set(sd) if tuple(target[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise WeightsError(
            f"weights {source} do not fit {arch.describe()}: they look like {describe_state_dict(sd)} "
            f"({detail}); pass the matching --model, or the official {arch.checkpoint_file} ({arch.where})"
        )
    # assign: the model may be empty ("meta" device, vit.build_vit); the file's tensors become its parameters
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in sd.items()}, strict=True, assign=True)

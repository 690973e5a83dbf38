"""DINOv2 and DINOv3 backbones by short name (see `registry.py`; our ViTs in `vit.py` and `vit3.py`),
with weights handling in `weights.py` (and `weights3.py` for DINOv3's key layouts).

Names are imported on first use: the registry (`retrieve models`) and file hashing need no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Backbone": "model", "backbone_names": "model", "ensure_weights": "model", "interpolate_pos_embed": "model",
    "load_backbone": "model", "native_dtype": "model", "resolve_device": "model", "weights_id": "model",
}

__all__ = sorted([*_EXPORTS, "Arch", "patch_size", "registry"])

# torch-free, and bound here so that the name `registry` is the function, not the submodule
from .registry import Arch, patch_size, registry  # noqa: E402

if TYPE_CHECKING:
    from .model import (Backbone, backbone_names, ensure_weights, interpolate_pos_embed, load_backbone, native_dtype,
                        resolve_device, weights_id)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy names too: dir() and tab completion show them
    return sorted({*globals(), *__all__})

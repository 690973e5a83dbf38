"""DINOv2 backbones by short name (see `registry.py`), with weights handling in `weights.py`."""

from .model import Backbone, backbone_names, ensure_weights, interpolate_pos_embed, load_backbone, native_dtype, resolve_device
from .registry import Arch, registry

__all__ = ["Arch", "Backbone", "backbone_names", "ensure_weights", "interpolate_pos_embed", "load_backbone", "native_dtype", "registry",
           "resolve_device"]

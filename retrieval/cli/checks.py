"""Arguments checked before torch is imported: a refusal that needs no model comes in well under a
second and a half, not after the 8-12 s it takes to import torch and load one. Files that are
missing or folders where an image is wanted, a path with a space typed without quotes, an unknown
--model, a --device this machine cannot have. What only torch can tell (a CUDA driver with no
usable GPU) is still checked where the model loads."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RetrievalError, UsageError
from ..types import shown

# A CUDA (or ROCm) device needs one of these on Linux; without any, torch would find none either.
DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def _unquoted(paths: Sequence[Path], i: int) -> str:
    """` ('my photo.jpg' exists: quote a path that has spaces)` when paths[i] and those after it,
    joined by spaces, name something that exists: the shell split an unquoted path."""
    for j in range(i + 1, len(paths)):
        joined = " ".join(str(p) for p in paths[i:j + 1])
        if os.path.exists(joined):
            return f" ({shlex.quote(shown(joined))} exists: quote a path that has spaces)"
    return ""


def existing(paths: Sequence[Path], *, files_only: bool = False) -> None:
    """Each path exists (with `files_only`, as a file, not a folder); RetrievalError naming the first
    that does not and the fix."""
    for i, p in enumerate(paths):
        if p.is_file() or (p.is_dir() and not files_only):
            continue
        if p.is_dir():
            raise RetrievalError(f"{shown(str(p))} is a folder; pass image files (`retrieve index "
                                 f"{shlex.quote(shown(str(p)))}` indexes a folder)")
        if os.path.lexists(p):
            continue  # a dangling link, a socket, a file we may not stat: the reader says what it is
        raise RetrievalError(f"{shown(str(p))} does not exist{_unquoted(paths, i) or '; check the path'}")


def image_inputs(items: Sequence[Path]) -> list[str]:
    """The image files that files and folders stand for (folders expanded: engine.expand_inputs),
    after `existing`; RetrievalError when there are none."""
    from .. import engine

    existing(items)
    paths: list[str] = engine.expand_inputs(items)
    if not paths:
        raise RetrievalError(f"no image files in {', '.join(shown(str(p)) for p in items)}; pass image files or "
                             f"folders holding them")
    return paths


def known_model(name: str | None) -> None:
    """UnknownBackboneError (a usage error, exit 2) listing the valid names, for a name not in the registry."""
    if name is not None:
        from ..backbone.registry import patch_size

        patch_size(name)


def model_of(overrides: dict[str, Any]) -> str | None:
    """The backbone a command's merged overrides (defaults, a --config file, flags) name, if any."""
    backbone = overrides.get("backbone")
    return backbone.get("name") if isinstance(backbone, dict) else None


def device(device: str | None) -> None:
    """A --device this machine could have: cpu, cuda or cuda:N, and cuda only where a driver is (Linux);
    UsageError for a malformed one, RetrievalError where there is no CUDA device."""
    if device is None or device == "cpu":
        return
    kind, colon, index = device.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N (or leave --device out: cuda when "
                         f"present, else cpu)")
    if sys.platform.startswith("linux") and not any(os.path.exists(f) for f in DRIVER_FILES):
        raise RetrievalError(f"--device {device}: no CUDA device here (no NVIDIA GPU or driver); use --device cpu "
                             f"or leave --device out")

"""`retrieve serve`: an index behind an HTTP API and a web page (docs/serve.md).

The top layer beside the CLI (retrieval/cli): it imports the engine only (and config / types / errors).
Names are imported on first use, so the CLI checks its options (serve.limits, serve.sockets, serve.guard)
before the engine and torch are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_MAX_UPLOAD": "app", "create_app": "app",
    "Limits": "limits", "parse_size": "limits",
    "bind": "sockets", "urls": "sockets",
    "server_config": "connections",
    "Hosts": "guard", "check_token": "guard",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .app import DEFAULT_MAX_UPLOAD, create_app
    from .connections import server_config
    from .guard import Hosts, check_token
    from .limits import Limits, parse_size
    from .sockets import bind, urls


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy names too: dir() and tab completion show them
    return sorted({*globals(), *__all__})

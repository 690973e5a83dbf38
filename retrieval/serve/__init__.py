"""`retrieve serve`: an index behind an HTTP API and a web page (docs/serve.md).

The top layer beside the CLI (retrieval/cli): it imports the engine only (and config / types / errors).
"""

from __future__ import annotations

from .app import DEFAULT_MAX_UPLOAD, create_app
from .connections import server_config
from .limits import Limits, parse_size
from .sockets import bind

__all__ = ["DEFAULT_MAX_UPLOAD", "Limits", "bind", "create_app", "parse_size", "server_config"]

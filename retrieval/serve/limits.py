"""What `retrieve serve` accepts from a client, in numbers (docs/serve.md, "Limits"), and the
parsers that hold requests to them. No heavy imports: the CLI checks its options with these
before the model (torch) is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

MAX_K = 1000  # results (k), re-ranking shortlist (rerank_k) and query-expansion neighbours (qe) of one search
MAX_ALPHA = 100.0  # qe_alpha, the weight exponent of query expansion (above 0): sim**100 already keeps only copies
MIN_SIDE, MAX_SIDE = 16, 4096  # longest side, in pixels, of an indexed image sent back (?max=)
MAX_ID = 2**63 - 1  # ids are SQLite integers: a larger number names no image
DECIMAL = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # a bbox coordinate: ASCII, no sign, exponent or '_'
BBOX = rf"\s*{DECIMAL}\s*(?:,\s*{DECIMAL}\s*){{3}}"  # x1,y1,x2,y2 (a regular expression, matched whole)
SHOWN = 40  # characters of a client's value echoed back in an error
PICTURE_FORMATS = ("json", "png")  # ?format= of a correspondences route (the first the default)

_NUMBER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() also takes '٣', '1_0' and '+3'
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


@dataclass(frozen=True)
class Limits:
    """Time and count limits on connections (enforced by serve/connections.py and the upload's
    reader in serve/app.py). The defaults are what `retrieve serve` runs with."""

    head_timeout: float = 10.0  # seconds for a request line and headers, from connecting or the last answer
    body_timeout: float = 60.0  # seconds for an upload's body, from its headers
    keep_alive: int = 5  # seconds an idle connection stays open between requests
    max_connections: int = 64  # open at once; one more is answered 503 and closed
    max_head: int = 16 * 1024  # bytes buffered of a request line and headers not yet complete; more: 400


def parse_size(text: str) -> int:
    """'50MB' -> 50_000_000, '1MiB' -> 1048576, '2048' -> 2048; UsageError otherwise."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower().removesuffix("b") if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"--max-upload must be a size like 50MB, 512KB or 1GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def clip(text: str) -> str:
    """A client's value as an error message shows it: repr, at most SHOWN characters of it."""
    return repr(text) if len(text) <= SHOWN else repr(text[:SHOWN]) + f"... ({len(text)} characters)"


def whole_number(text: str, name: str, *, low: int, high: int) -> int:
    """A number a client sent, in ASCII digits (surrounding spaces allowed), low <= n <= high;
    UsageError naming `name` and the range otherwise."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise UsageError(f"{name} must be a whole number from {low} to {high} in digits 0-9, got {clip(text)}")
    n = int(text[:20])  # past 19 digits a number is only out of range (and int() of 5000 digits is slow)
    if n < low:
        raise UsageError(f"{name} must be at least {low}, got {clip(text)}")
    if n > high:
        raise UsageError(f"{name} must be at most {high}, got {clip(text)}")
    return n


__all__ = ["BBOX", "DECIMAL", "MAX_ALPHA", "MAX_ID", "MAX_K", "MAX_SIDE", "MIN_SIDE", "Limits", "clip", "parse_size",
           "whole_number"]

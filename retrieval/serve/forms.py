"""What a request says, read and checked: the search form (its upload counted as it streams in,
its options and box) and the numbers in paths and query strings. Anything wrong is an
HTTPException with a one-line message (400; 413 and 408 for an upload too large or too slow)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..config import SearchOptions
from ..errors import UsageError
from ..types import Box, parse_box
from .limits import BBOX, DECIMAL, MAX_ALPHA, MAX_ID, MAX_K, clip, whole_number

_ID = re.compile(r"[0-9]{1,19}")  # an image id in a path: ASCII digits, at most MAX_ID
_BBOX = re.compile(BBOX)
_REAL = re.compile(rf"{DECIMAL}(?:[eE][-+]?[0-9]{{1,4}})?")  # qe_alpha: as bbox's numbers, an exponent allowed

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class TooLarge(Exception):
    pass


class TooSlow(Exception):
    pass


async def search_form(request: Request, *, max_upload: int, body_timeout: float) -> tuple[bytes, SearchOptions,
                                                                                          Box | None]:
    """POST /api/search's form, parsed once: the upload's bytes, the options and the box. The body
    may be at most max_upload bytes (413) and take at most body_timeout seconds to arrive (408)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_upload:
        raise HTTPException(413, f"upload of {int(length)} bytes is over the limit of {max_upload} bytes "
                                 f"(--max-upload)")
    counted = Request(request.scope, receive=counting(request.receive, max_upload, seconds=body_timeout))
    try:
        async with counted.form(max_files=1, max_fields=8) as form:
            return await _fields(form)
    except TooLarge:
        raise HTTPException(413, f"upload is over the limit of {max_upload} bytes (--max-upload)") from None
    except TooSlow:
        raise HTTPException(408, f"the upload took longer than {body_timeout:g} s to arrive",
                            headers={"Connection": "close"}) from None


async def _fields(form: Any) -> tuple[bytes, SearchOptions, Box | None]:
    """The form's upload (its bytes in memory: the form holds up to 1 MiB of a part there,
    python-multipart spills larger ones to a temporary file), options and box, checked."""
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "no query image: send the file as multipart form field 'image'")
    options = search_options(form)
    bbox = _bbox_field(form.get("bbox"))
    return await upload.read(), options, bbox


def search_options(fields: Any) -> SearchOptions:
    """Search options from a form's fields or a query string (GET /api/similar/{id}), checked in
    this order; the defaults are SearchOptions', MAX_K and MAX_ALPHA the server's bounds on top."""
    d = SearchOptions()
    return SearchOptions(k=_int_field(fields.get("k"), "k", default=d.k, low=1, high=MAX_K),
                         rerank_k=_int_field(fields.get("rerank_k"), "rerank_k", default=d.rerank_k, low=1, high=MAX_K),
                         qe=_int_field(fields.get("qe"), "qe", default=d.qe, low=0, high=MAX_K),
                         qe_alpha=_alpha_field(fields.get("qe_alpha"), default=d.qe_alpha),
                         rerank=_bool_field(fields.get("rerank"), "rerank"))


def _field(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPException(400, f"{name} must be a form field, not a file")
    return value.strip() or None


def _int_field(value: Any, name: str, *, default: int, low: int, high: int) -> int:
    text = _field(value, name)
    return default if text is None else whole_number(text, name, low=low, high=high)


def _alpha_field(value: Any, *, default: float) -> float:
    """qe_alpha: a decimal number (an exponent allowed), 0 < alpha <= MAX_ALPHA."""
    text = _field(value, "qe_alpha")
    if text is None:
        return default
    alpha = float(text) if _REAL.fullmatch(text) else math.nan
    if not 0 < alpha <= MAX_ALPHA:  # nan included
        raise HTTPException(400, f"qe_alpha must be a number above 0 and at most {MAX_ALPHA:g} in digits 0-9, "
                                 f"got {clip(text)}")
    return alpha


def _bool_field(value: Any, name: str) -> bool:
    text = _field(value, name)
    if text is None:
        return False
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise HTTPException(400, f"{name} must be true or false, got {clip(text)}")


def _bbox_field(value: Any) -> Box | None:
    """parse_box, with the server's stricter spelling on top (serve/limits.py BBOX: ASCII digits,
    no sign); whether the box lies inside the image is checked once it is decoded (box_inside)."""
    text = _field(value, "bbox")
    if text is None:
        return None
    if not _BBOX.fullmatch(text):
        raise HTTPException(400, f"bbox must be x1,y1,x2,y2 in pixels of the upright image, as finite, "
                                 f"non-negative numbers in digits 0-9, got {clip(text)}")
    try:
        return parse_box(text, name="bbox", quoted=clip(text))  # 400 digits are beyond a float: not finite
    except UsageError as e:
        raise HTTPException(400, str(e)) from None


def int_param(request: Request, name: str, *, low: int, high: int) -> int | None:
    """A number in the query string; None when absent or empty (`?max=`, as an empty form field)."""
    text = _field(request.query_params.get(name), name)
    return None if text is None else whole_number(text, name, low=low, high=high)


def image_id(request: Request, name: str = "id") -> int:
    """The id in the path (parameter `name`); 404 for anything that cannot be an indexed image's id."""
    text = request.path_params[name]
    if not _ID.fullmatch(text) or int(text) > MAX_ID:
        raise HTTPException(404, f"no indexed image with id {clip(text)}")
    return int(text)


def counting(receive: Receive, limit: int, *, seconds: float | None = None) -> Receive:
    """`receive` that raises TooLarge once the body passes `limit` bytes (whatever Content-Length
    said), and TooSlow once it has taken more than `seconds` from now."""
    seen = 0
    deadline = None if seconds is None else time.monotonic() + seconds

    async def wrapped() -> Message:
        nonlocal seen
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = await asyncio.wait_for(receive(), left)
        except TimeoutError:
            raise TooSlow() from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge()
        return message

    return wrapped


__all__ = ["TooLarge", "TooSlow", "counting", "image_id", "int_param", "search_form"]

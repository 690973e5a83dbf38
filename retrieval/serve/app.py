"""The HTTP face of an index: a JSON API and a static web page (Starlette; docs/serve.md).

    app = create_app("demo-index", token=None, max_upload=50_000_000)
    uvicorn.run(app, host="127.0.0.1", port=8000)

A thin adapter like the CLI: it parses requests, calls the engine on the index's own thread
(batching.IndexThread) and turns RetrievalError into `{"error": "one line"}` with a 4xx status.
Only what needs the model or the index's connection runs on that thread: the health probe counts
on a thread of its own (batching.CensusThread), pictures are decoded, drawn and encoded by a small
pool of their own, and the event loop only parses and answers.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import SearchOptions
from ..engine.serving import PICTURE_KINDS, Correspondences, correspondences, indexed_path, jpeg_bytes, similar
from ..errors import BadImageError, RetrievalError, UsageError
from ..types import Box, parse_box, shown
from .batching import Batcher, CensusThread, IndexThread, Searched, SearchJob
from .guard import Guard, Hosts, check_token
from .limits import BBOX, DECIMAL, MAX_ALPHA, MAX_ID, MAX_K, MAX_SIDE, MIN_SIDE, Limits, clip, whole_number
from .openapi import document

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 50 * 1000 * 1000
DEFAULT_CACHE_BYTES = 256 * 1000 * 1000  # uploads kept for drawing their correspondences later
PICTURE_WORKERS = 2  # threads that decode, draw and encode pictures (PIL releases the GIL for most of it)
_ID = re.compile(r"[0-9]{1,19}")  # an image id in a path: ASCII digits, at most MAX_ID
_BBOX = re.compile(BBOX)
_REAL = re.compile(rf"{DECIMAL}(?:[eE][-+]?[0-9]{{1,4}})?")  # qe_alpha: as bbox's numbers, an exponent allowed

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class _JSON(JSONResponse):
    """JSON as `retrieve query --json` and `retrieve info --json` print it: json.dumps with its
    default ensure_ascii, so a file name's bytes that are not UTF-8 (surrogate escapes from
    os.fsdecode) travel as "\\udcff", which os.fsencode turns back into the bytes (docs/index.md).
    Starlette's own JSONResponse (ensure_ascii=False, then UTF-8) cannot encode them at all."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class _QueryCache:
    """The most recent searches (query embedding, picture and uploaded bytes), least recently used
    dropped first: at most `size` of them, holding at most `max_bytes` of uploads (the newest is
    always kept)."""

    def __init__(self, size: int, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.size, self.max_bytes = size, max_bytes
        self._items: OrderedDict[str, Searched] = OrderedDict()

    def put(self, searched: Searched) -> str:
        qid = secrets.token_urlsafe(12)
        self._items[qid] = searched
        while len(self._items) > 1 and (len(self._items) > self.size or self.nbytes() > self.max_bytes):
            self._items.popitem(last=False)
        return qid

    def nbytes(self) -> int:
        return sum(len(s.query.source) for s in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, qid: str) -> Searched:
        if qid not in self._items:
            raise HTTPException(404, f"query {clip(qid)} is not among the {self.size} most recent searches; "
                                     f"search again (POST /api/search) for a new query id")
        self._items.move_to_end(qid)
        return self._items[qid]


def create_app(index_path: str | Path, *, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               weights: str | None = None, device: str | None = None, cache_size: int = 64,
               cache_bytes: int = DEFAULT_CACHE_BYTES, body_timeout: float = Limits.body_timeout,
               window: float = 0.0, max_batch: int = 16,
               host: str = "127.0.0.1", allow_hosts: Sequence[str] = ()) -> Starlette:
    """An ASGI app over the index at `index_path`, opened (and its model loaded) now, on its own
    thread; closed when the app shuts down. token: every /api/ request must carry
    `Authorization: Bearer <token>`. max_upload: bytes of the largest request body accepted;
    body_timeout: seconds it may take to arrive (408 after that).
    window: seconds a search waits for others to share its forward pass (see batching.Batcher).
    host: the address it listens on; a request's Host header must name it, localhost, a loopback
    address or one of allow_hosts (guard.Hosts; any address when host is 0.0.0.0 or ::)."""
    check_token(token)
    hosts = Hosts.of(host, allow=allow_hosts)
    thread = IndexThread(index_path, weights=weights, device=device)
    try:
        census = CensusThread(thread.run(lambda idx: idx.store.path))
    except BaseException:
        thread.close()
        raise
    pictures = ThreadPoolExecutor(max_workers=PICTURE_WORKERS, thread_name_prefix="retrieval-picture")
    batcher = Batcher(thread, window=window, max_batch=max_batch)
    cache = _QueryCache(cache_size, cache_bytes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            pictures.shutdown(wait=False, cancel_futures=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, census.close)
            await loop.run_in_executor(None, thread.close)
            await loop.run_in_executor(None, pictures.shutdown)

    async def health(request: Request) -> Response:
        """A liveness probe: never waits for the index thread, and says how long that thread has
        been on its current job (busy_s; 0 when idle)."""
        return _JSON({"status": "ok", "images": await census.count(), "busy_s": round(thread.busy_s, 3)})

    async def info(request: Request) -> Response:
        return _JSON(await thread.call(lambda idx: idx.info().to_dict()))

    async def search(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload:
            raise HTTPException(413, f"upload of {int(length)} bytes is over the limit of {max_upload} bytes "
                                     f"(--max-upload)")
        counted = Request(request.scope, receive=_counting(request.receive, max_upload, seconds=body_timeout))
        try:
            async with counted.form(max_files=1, max_fields=8) as form:
                job = await _job(form)
        except _TooLarge:
            raise HTTPException(413, f"upload is over the limit of {max_upload} bytes (--max-upload)") from None
        except _TooSlow:
            raise HTTPException(408, f"the upload took longer than {body_timeout:g} s to arrive",
                                headers={"Connection": "close"}) from None
        searched = await batcher.search(job)
        return _JSON(_found(cache.put(searched), searched))

    async def similar_to(request: Request) -> Response:
        """More like an indexed image: its stored descriptor searched on the index thread (no
        decode, no forward pass), itself left out; the answer as a search's."""
        image_id, options = _image_id(request), _options(request.query_params)
        found = await thread.call(lambda idx: similar(idx, image_id, options))
        if found is None:
            raise HTTPException(404, f"no indexed image with id {image_id}")
        searched = Searched(*found)
        return _JSON(_found(cache.put(searched), searched))

    async def image(request: Request) -> Response:
        image_id = _image_id(request)
        max_side = _int_param(request, "max", low=MIN_SIDE, high=MAX_SIDE)
        path, max_pixels = await thread.call(lambda idx: (indexed_path(idx, image_id), idx.config.image.max_pixels))
        if path is None:
            raise HTTPException(404, f"no indexed image with id {image_id}")
        data = await _drawn(pictures, lambda: jpeg_bytes(path, max_pixels=max_pixels, max_side=max_side))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    async def matches(request: Request) -> Response:
        searched = cache.get(request.path_params["qid"])
        image_id = _image_id(request)
        fmt = request.query_params.get("format", "json")
        kind = request.query_params.get("kind", "matches")
        if fmt not in ("json", "png"):
            raise HTTPException(400, f"format must be json or png, got {fmt!r}")
        if kind not in PICTURE_KINDS:
            raise HTTPException(400, f"kind must be one of {', '.join(PICTURE_KINDS)}, got {kind!r}")
        c = await thread.call(lambda idx: correspondences(idx, searched.query, image_id))
        if c is None:
            raise HTTPException(404, f"no indexed image with id {image_id}")
        if fmt == "json":
            return _JSON(c.to_json())
        return Response(await _drawn(pictures, lambda: _png(c, kind)), media_type="image/png")

    api = document(token=token is not None, max_upload=max_upload)

    async def openapi(request: Request) -> Response:
        return _JSON(api)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", page),
        Route("/api/health", health),
        Route("/api/info", info),
        Route("/api/openapi.json", openapi),
        Route("/api/search", search, methods=["POST"]),
        Route("/api/similar/{id}", similar_to),
        Route("/api/images/{id}", image),
        Route("/api/queries/{qid}/matches/{id}", matches),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, RetrievalError: _retrieval_error,
                                        ClientDisconnect: _disconnected, Exception: _unexpected})
    app.state.thread, app.state.batcher, app.state.cache = thread, batcher, cache
    app.add_middleware(Guard, token=token, hosts=hosts)
    return app


async def _drawn(pictures: ThreadPoolExecutor, draw: Callable[[], bytes]) -> bytes:
    """draw() in the picture pool: neither the event loop (every request) nor the index thread
    (every search) waits for decoding, drawing or encoding."""
    return await asyncio.get_running_loop().run_in_executor(pictures, draw)


def _png(c: Correspondences, kind: str) -> bytes:
    buf = io.BytesIO()
    c.picture(kind).save(buf, format="PNG")
    return buf.getvalue()


def _found(qid: str, searched: Searched) -> dict[str, Any]:
    """A search's answer (POST /api/search, GET /api/similar/{id})."""
    hits = [{"rank": h.rank, "score": h.score, "path": h.path, "id": h.id,
             **({"inliers": h.inliers} if h.inliers is not None else {})} for h in searched.result.hits]
    return {"query": qid, "hits": hits, "reranked": searched.result.reranked, "size": list(searched.query.size)}


async def _job(form: Any) -> SearchJob:
    """A search job from the form: the upload's bytes (in memory: the form holds up to 1 MiB of a
    part there, python-multipart spills larger ones to a temporary file), options checked."""
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "no query image: send the file as multipart form field 'image'")
    options = _options(form)
    bbox = _bbox_field(form.get("bbox"))
    return SearchJob(await upload.read(), options=options, bbox=bbox)


def _options(fields: Any) -> SearchOptions:
    """Search options from a form's fields or a query string, checked in this order; the defaults
    are SearchOptions', MAX_K and MAX_ALPHA the server's bounds on top."""
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


def _int_param(request: Request, name: str, *, low: int, high: int) -> int | None:
    """A number in the query string; None when absent or empty (`?max=`, as an empty form field)."""
    text = _field(request.query_params.get(name), name)
    return None if text is None else whole_number(text, name, low=low, high=high)


def _image_id(request: Request) -> int:
    """The id in the path; 404 for anything that cannot be an indexed image's id."""
    text = request.path_params["id"]
    if not _ID.fullmatch(text) or int(text) > MAX_ID:
        raise HTTPException(404, f"no indexed image with id {clip(text)}")
    return int(text)


def _counting(receive: Receive, limit: int, *, seconds: float | None = None) -> Receive:
    """`receive` that raises _TooLarge once the body passes `limit` bytes (whatever Content-Length
    said), and _TooSlow once it has taken more than `seconds` from now."""
    seen = 0
    deadline = None if seconds is None else time.monotonic() + seconds

    async def wrapped() -> Message:
        nonlocal seen
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = await asyncio.wait_for(receive(), left)
        except TimeoutError:
            raise _TooSlow() from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
        return message

    return wrapped


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """`{"error": "one line"}` for people: a file name's bytes that are not UTF-8 written as \\xNN,
    as the CLI's messages write them."""
    return _JSON({"error": shown(" ".join(str(message).split()))}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        return _error(404, f"no such resource: {request.url.path[:200]}")
    if exc.status_code == 405:
        return _error(405, f"{request.method} is not allowed on {request.url.path[:200]}")
    return _error(exc.status_code, exc.detail, exc.headers)


async def _retrieval_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, BadImageError):  # name the upload or the indexed image, not a path
        what = "upload" if request.url.path == "/api/search" else "indexed image"
        return _error(400, f"the {what} cannot be used: {exc.reason}")
    if isinstance(exc, UsageError):
        return _error(400, str(exc))
    log.warning("%s %s: %s", request.method, request.url.path, shown(str(exc)))
    return _error(409, str(exc))


async def _disconnected(request: Request, exc: Exception) -> Response:
    """The client went away while its request was read (a closed tab, a cancelled upload): not an
    error of ours, and nobody is left to answer."""
    log.debug("%s %s: the client disconnected before its request was read", request.method, request.url.path)
    return Response(status_code=400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


__all__ = ["DEFAULT_MAX_UPLOAD", "create_app"]

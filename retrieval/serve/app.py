"""The HTTP face of an index: a JSON API and a static web page (Starlette; docs/serve.md).

    app = create_app("demo-index", token=None, max_upload=50_000_000)
    uvicorn.run(app, host="127.0.0.1", port=8000)

A thin adapter like the CLI, laid out as Starlette's own documentation lays out an app: the
handlers are module-level functions, listed in ROUTES, that find what they share (the Service:
the index's thread, the batcher, the query cache, the pools) on `request.app.state`; create_app
opens the index and makes that Service, the lifespan closes it. Handlers parse the request
(serve/forms.py), call the engine on the index's own thread (batching.IndexThread) and turn
RetrievalError into `{"error": "one line"}` with a 4xx status. Only what needs the model or the
index's connection runs on that thread: uploads are decoded by a pool of two threads, the health
probe counts on a thread of its own (batching.CensusThread), pictures are decoded, drawn and
encoded by another small pool, and the event loop only parses and answers.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import DedupeOptions
from ..engine.dedupe import index_duplicates
from ..engine.serving import (PICTURE_KINDS, Correspondences, UploadReader, correspondences, indexed_path,
                              jpeg_bytes, pair_correspondences, similar)
from ..errors import BadImageError, RetrievalError, UsageError
from ..types import shown
from .batching import Batcher, CensusThread, IndexThread, OnEmbed, Searched, SearchJob
from .forms import image_id, int_param, search_form, search_options
from .guard import Guard, Hosts, check_token
from .limits import MAX_SIDE, MIN_SIDE, PICTURE_FORMATS, Limits, clip
from .openapi import document

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 50 * 1000 * 1000
DEFAULT_CACHE_BYTES = 256 * 1000 * 1000  # uploads kept for drawing their correspondences later
PICTURE_WORKERS = 2  # threads that decode, draw and encode pictures (PIL releases the GIL for most of it)
# Threads that decode and resize uploads for the model, beside its forward passes: both cores can
# decode (images.pixel_limit's scopes are shared and counted, so concurrent reads are safe).
UPLOAD_WORKERS = 2
MAX_DEDUPE_IMAGES = 20_000  # GET /api/duplicates: its kNN graph runs on the index thread (docs/dedupe.md)
# Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005). A search
# crosses four threads (event loop, upload reader, index thread, back); each hand-off can wait out
# the interval while another thread runs Python, so the server shortens it while it runs
# (docs/throughput.md, "Hand-offs").
SWITCH_INTERVAL = 0.0005

T = TypeVar("T")


class _JSON(JSONResponse):
    """JSON as `retrieve query --json` and `retrieve info --json` print it: json.dumps with its
    default ensure_ascii, so a file name's bytes that are not UTF-8 (surrogate escapes from
    os.fsdecode) travel as "\\udcff", which os.fsencode turns back into the bytes (docs/index.md).
    Starlette's own JSONResponse (ensure_ascii=False, then UTF-8) cannot encode them at all."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class QueryCache:
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

    def get(self, qid: str) -> Searched:
        if qid not in self._items:
            raise HTTPException(404, f"query {clip(qid)} is not among the {self.size} most recent searches; "
                                     f"search again (POST /api/search) for a new query id")
        self._items.move_to_end(qid)
        return self._items[qid]


@dataclass(frozen=True)
class Service:
    """What the handlers share, on `request.app.state.service`: the index's thread and the batcher
    that shares its forward passes, the image count's thread, the recent queries, how uploads are
    read and the pool that reads them, the pool that draws pictures, the upload limits and the
    OpenAPI document."""

    index: IndexThread
    census: CensusThread
    batcher: Batcher
    queries: QueryCache
    reader: UploadReader
    uploads: ThreadPoolExecutor
    pictures: ThreadPoolExecutor
    max_upload: int
    body_timeout: float
    api: dict[str, Any]

    def close(self) -> None:
        """Stop the pools and close the index and the census (from any thread but theirs)."""
        self.pictures.shutdown(wait=False, cancel_futures=True)
        self.uploads.shutdown(wait=False, cancel_futures=True)
        self.census.close()
        self.index.close()
        self.pictures.shutdown()
        self.uploads.shutdown()

    async def run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        """fn() in one of the pools: neither the event loop (every request) nor the index thread
        (every search) waits for decoding, drawing or encoding."""
        return await asyncio.get_running_loop().run_in_executor(pool, fn)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def health(request: Request) -> Response:
    """A liveness probe: never waits for the index thread, and says how long that thread has been
    on its current job (busy_s; 0 when idle)."""
    s = _service(request)
    return _JSON({"status": "ok", "images": await s.census.count(), "busy_s": round(s.index.busy_s, 3)})


async def info(request: Request) -> Response:
    return _JSON(await _service(request).index.call(lambda idx: idx.info().to_dict()))


async def search(request: Request) -> Response:
    s = _service(request)
    data, options, box = await search_form(request, max_upload=s.max_upload, body_timeout=s.body_timeout)
    upload = await s.run(s.uploads, partial(s.reader.read, data, box=box))
    return _JSON(_found(s, await s.batcher.search(SearchJob(upload, options))))


def _found(s: Service, searched: Searched) -> dict[str, Any]:
    """A search's answer (POST /api/search, GET /api/similar/{id}): its query id for the
    correspondences, the hits, and the query's upright size."""
    return {"query": s.queries.put(searched), "hits": searched.result.to_json(),
            "reranked": searched.result.reranked, "size": list(searched.query.size)}


async def similar_to(request: Request) -> Response:
    """More like an indexed image: its stored descriptor searched on the index thread (no decode,
    no forward pass), itself left out; the answer as a search's."""
    s, wanted = _service(request), image_id(request)
    options = search_options(request.query_params)
    found = await s.index.call(lambda idx: similar(idx, wanted, options))
    if found is None:
        raise HTTPException(404, f"no indexed image with id {wanted}")
    return _JSON(_found(s, Searched(*found)))


async def duplicates(request: Request) -> Response:
    """Copy groups of the index with `retrieve dedupe`'s defaults, similar groups included (each
    group says its kind); on the index thread, so an index past MAX_DEDUPE_IMAGES is sent to the
    command instead of holding every search up."""
    def groups(idx: Any) -> dict[str, Any]:
        n = idx.count()
        if n > MAX_DEDUPE_IMAGES:
            raise RetrievalError(f"the index holds {n} images, more than this server groups "
                                 f"({MAX_DEDUPE_IMAGES}); run `retrieve dedupe --json` instead")
        return index_duplicates(idx, DedupeOptions(similar=True)).to_json()

    return _JSON(await _service(request).index.call(groups))


async def image(request: Request) -> Response:
    s, wanted = _service(request), image_id(request)
    max_side = int_param(request, "max", low=MIN_SIDE, high=MAX_SIDE)
    path, max_pixels = await s.index.call(lambda idx: (indexed_path(idx, wanted), idx.config.image.max_pixels))
    if path is None:
        raise HTTPException(404, f"no indexed image with id {wanted}")
    data = await s.run(s.pictures, partial(jpeg_bytes, path, max_pixels=max_pixels, max_side=max_side))
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


async def matches(request: Request) -> Response:
    s = _service(request)
    searched, wanted = s.queries.get(request.path_params["qid"]), image_id(request)
    fmt, kind = _picture_params(request)
    c = await s.index.call(lambda idx: correspondences(idx, searched.query, wanted))
    if c is None:
        raise HTTPException(404, f"no indexed image with id {wanted}")
    return await _correspondences(s, c, fmt, kind)


async def pair_matches(request: Request) -> Response:
    """Two indexed images' correspondences (the Duplicates view: a group's keeper `a` and one of
    its members `b`), on the index thread as `retrieve dedupe --html` draws them."""
    s, a, b = _service(request), image_id(request, "a"), image_id(request, "b")
    fmt, kind = _picture_params(request)
    c = await s.index.call(lambda idx: pair_correspondences(idx, a, b))
    if c is None:
        raise HTTPException(404, f"no indexed image with id {a} or {b}")
    return await _correspondences(s, c, fmt, kind)


def _picture_params(request: Request) -> tuple[str, str]:
    """?format=json|png and ?kind= (PICTURE_KINDS) of a correspondences route; 400 for others."""
    fmt = request.query_params.get("format", PICTURE_FORMATS[0])
    kind = request.query_params.get("kind", PICTURE_KINDS[0])
    if fmt not in PICTURE_FORMATS:
        raise HTTPException(400, f"format must be {' or '.join(PICTURE_FORMATS)}, got {fmt!r}")
    if kind not in PICTURE_KINDS:
        raise HTTPException(400, f"kind must be one of {', '.join(PICTURE_KINDS)}, got {kind!r}")
    return fmt, kind


async def _correspondences(s: Service, c: Correspondences, fmt: str, kind: str) -> Response:
    if fmt == "json":
        return _JSON(c.to_json())
    return Response(await s.run(s.pictures, partial(_png, c, kind)), media_type="image/png")


async def openapi(request: Request) -> Response:
    return _JSON(_service(request).api)


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


ROUTES = (
    Route("/", page),
    Route("/api/health", health),
    Route("/api/info", info),
    Route("/api/openapi.json", openapi),
    Route("/api/search", search, methods=["POST"]),
    Route("/api/similar/{id}", similar_to),
    Route("/api/duplicates", duplicates),
    Route("/api/images/{id}", image),
    Route("/api/queries/{qid}/matches/{id}", matches),
    Route("/api/pairs/{a}/{b}/matches", pair_matches),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
)


def _png(c: Correspondences, kind: str) -> bytes:
    buf = io.BytesIO()
    c.picture(kind).save(buf, format="PNG")
    return buf.getvalue()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Nothing to open (create_app opened the index, so that a bad index is refused before the
    server announces itself); the GIL's switch interval is SWITCH_INTERVAL at most while the server
    runs; the Service is closed and the interval restored when it stops."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(before)
        await asyncio.get_running_loop().run_in_executor(None, app.state.service.close)


def create_app(index_path: str | Path, *, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               weights: str | None = None, device: str | None = None, cache_size: int = 64,
               cache_bytes: int = DEFAULT_CACHE_BYTES, body_timeout: float = Limits.body_timeout,
               window: float = 0.0, max_queries: int = 16, on_embed: OnEmbed | None = None,
               host: str = "127.0.0.1", allow_hosts: Sequence[str] = ()) -> Starlette:
    """An ASGI app over the index at `index_path`, opened (and its model loaded) now, on its own
    thread; closed when the app shuts down. token: every /api/ request must carry
    `Authorization: Bearer <token>`. max_upload: bytes of the largest request body accepted;
    body_timeout: seconds it may take to arrive (408 after that).
    window: seconds a search waits for others to share its forward pass (see batching.Batcher);
    on_embed(n): called on the index thread with the number of queries of each embedding call (a
    metric: the benchmark counts queries per forward pass with it).
    host: the address it listens on; a request's Host header must name it, localhost, a loopback
    address or one of allow_hosts (guard.Hosts; any address when host is 0.0.0.0 or ::)."""
    check_token(token)
    hosts = Hosts.of(host, allow=allow_hosts)
    app = Starlette(routes=list(ROUTES), lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, RetrievalError: _retrieval_error,
                                        ClientDisconnect: _disconnected, Exception: _unexpected})
    app.state.service = _open(index_path, weights=weights, device=device, cache_size=cache_size,
                              cache_bytes=cache_bytes, window=window, max_queries=max_queries, on_embed=on_embed,
                              max_upload=max_upload, body_timeout=body_timeout,
                              api=document(token=token is not None, max_upload=max_upload))
    app.add_middleware(Guard, token=token, hosts=hosts)
    return app


def _open(index_path: str | Path, *, weights: str | None, device: str | None, cache_size: int, cache_bytes: int,
          window: float, max_queries: int, on_embed: OnEmbed | None, max_upload: int, body_timeout: float,
          api: dict[str, Any]) -> Service:
    """The index opened on its own thread, and everything the handlers share around it."""
    thread = IndexThread(index_path, weights=weights, device=device)
    try:
        census = CensusThread(thread.run(lambda idx: idx.store.path))
        reader = thread.run(UploadReader.of)
    except BaseException:
        thread.close()
        raise
    return Service(thread, census, Batcher(thread, window=window, max_queries=max_queries, on_embed=on_embed),
                   QueryCache(cache_size, cache_bytes), reader,
                   ThreadPoolExecutor(max_workers=UPLOAD_WORKERS, thread_name_prefix="retrieval-upload"),
                   ThreadPoolExecutor(max_workers=PICTURE_WORKERS, thread_name_prefix="retrieval-picture"),
                   max_upload, body_timeout, api)


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

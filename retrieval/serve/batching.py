"""One thread owns the index; concurrent queries share its forward passes.

`IndexThread` opens the `Index` on its own thread and runs every call on it there (SQLite
connections and the model belong to one thread; two forward passes never run at once).
`CensusThread` counts the indexed images through a read connection of its own, on a second
thread, for the health probe.
`Batcher` collects the searches that arrive while the thread is busy (plus an optional short
window) and embeds them in one `embed_explained` call, i.e. batched forward passes. Their uploads
arrive decoded (engine.serving.UploadReader, in the requests' own tasks): the thread only runs
the forward passes and the searches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from ..config import SearchOptions
from ..engine import Index
from ..engine.search import SearchResult
from ..engine.serving import Census, ExplainedQuery, IndexedQuery, Upload, embed_explained
from ..errors import RetrievalError

T = TypeVar("T")


class _Closes(Protocol):
    def close(self) -> None: ...


R = TypeVar("R", bound=_Closes)


class _Owner(Generic[R]):
    """An object made, used and closed on one dedicated thread (a SQLite connection belongs to
    the thread that opened it)."""

    def __init__(self, make: Callable[[], R], *, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._obj: R | None = None
        self._since: float | None = None  # monotonic time the running call started
        try:
            self._obj = self._pool.submit(make).result()
        except BaseException:
            self._pool.shutdown(wait=True)
            raise

    def _on_thread(self, fn: Callable[[R], T]) -> Callable[[], T]:
        def job() -> T:
            assert self._obj is not None
            self._since = time.monotonic()
            try:
                return fn(self._obj)
            finally:
                self._since = None

        return job

    @property
    def busy_s(self) -> float:
        """Seconds the call now running on the thread has taken so far (0.0 when it is idle);
        read from any thread."""
        since = self._since
        return 0.0 if since is None else time.monotonic() - since

    def run(self, fn: Callable[[R], T]) -> T:
        """fn(obj) on the owning thread, waiting for it (from any thread but that one)."""
        return self._pool.submit(self._on_thread(fn)).result()

    async def call(self, fn: Callable[[R], T]) -> T:
        """fn(obj) on the owning thread, awaited."""
        return await asyncio.wrap_future(self._pool.submit(self._on_thread(fn)))

    def close(self) -> None:
        def _close() -> None:
            if self._obj is not None:
                self._obj.close()
                self._obj = None

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)


class IndexThread(_Owner[Index]):
    """An Index opened, used and closed on one dedicated thread, the only one that runs the model."""

    def __init__(self, path: str | Path, *, weights: str | None = None, device: str | None = None) -> None:
        super().__init__(lambda: _open(path, weights, device), name="retrieval-index")


def _open(path: str | Path, weights: str | None, device: str | None) -> Index:
    """The Index with its model and vectors loaded now, not on the first request."""
    idx = Index.open(path, weights=weights, device=device)
    try:
        idx.backbone()
        if idx.count() > 0:
            idx.ensure_vectors()
    except BaseException:
        idx.close()
        raise
    return idx


class CensusThread(_Owner[Census]):
    """The index's image count, read on a thread of its own through a connection of its own
    (engine.serving.Census): /api/health answers while the index thread is busy for minutes."""

    def __init__(self, store: Path) -> None:
        super().__init__(lambda: Census(store), name="retrieval-health")

    async def count(self) -> int:
        return await self.call(lambda census: census.count())


@dataclass(frozen=True)
class SearchJob:
    """One search's upload and options; the defaults are POST /api/search's (serve/openapi.py)."""

    upload: Upload  # decoded and resized for the model (its box applied), with its bytes
    options: SearchOptions = SearchOptions()  # `retrieve query`'s own defaults


@dataclass(frozen=True)
class Searched:
    query: ExplainedQuery | IndexedQuery  # an upload, or an indexed image (GET /api/similar)
    result: SearchResult


OnEmbed = Callable[[int], None]  # told the number of queries of each embedding call, on the index thread


def _uncounted(n: int) -> None:
    pass


class Batcher:
    """Searches from many requests, their queries embedded together. window: seconds to wait for
    more queries before a batch starts (0: only those that queued while the previous batch ran);
    on_embed(n): called with the number of queries of each embedding call (a metric)."""

    def __init__(self, thread: IndexThread, *, window: float = 0.0, max_queries: int = 16,
                 on_embed: OnEmbed | None = None) -> None:
        self.thread, self.window, self.max_queries = thread, window, max_queries
        self.on_embed = on_embed or _uncounted
        self._pending: list[tuple[SearchJob, asyncio.Future[Searched]]] = []
        self._draining = False

    async def search(self, job: SearchJob) -> Searched:
        fut: asyncio.Future[Searched] = asyncio.get_running_loop().create_future()
        self._pending.append((job, fut))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self.window)
                take, self._pending = self._pending[: self.max_queries], self._pending[self.max_queries:]
                jobs = [j for j, _ in take]
                try:
                    run = partial(_run, jobs=jobs, on_embed=self.on_embed)
                    outcomes: list[Searched | BaseException] = await self.thread.call(run)
                except BaseException as e:  # a bug: every waiter hears of it
                    outcomes = [e] * len(take)
                for (_, fut), out in zip(take, outcomes):
                    if fut.done():
                        continue
                    if isinstance(out, BaseException):
                        fut.set_exception(out)
                    else:
                        fut.set_result(out)
        finally:
            self._draining = False


def _run(idx: Index, *, jobs: list[SearchJob], on_embed: OnEmbed) -> list[Searched | BaseException]:
    """On the index thread: embed the queries together, then search each with its own options.
    One failing query fails only its own request."""
    out: list[Searched | BaseException] = []
    for j, q in zip(jobs, _embed(idx, jobs, on_embed)):
        if isinstance(q, BaseException):
            out.append(q)
            continue
        try:
            out.append(Searched(q, idx.search_embedded(q.query, j.options)))
        except RetrievalError as e:
            out.append(e)
    return out


def _embed(idx: Index, jobs: list[SearchJob], on_embed: OnEmbed) -> list[ExplainedQuery | BaseException]:
    """Embed together; when that fails, embed each alone so that only the failing one fails."""
    try:
        on_embed(len(jobs))
        return list(embed_explained(idx, [j.upload for j in jobs]))
    except RetrievalError as e:
        if len(jobs) == 1:
            return [e]
    out: list[ExplainedQuery | BaseException] = []
    for j in jobs:
        out.extend(_embed(idx, [j], on_embed))
    return out


__all__ = ["Batcher", "CensusThread", "IndexThread", "OnEmbed", "SearchJob", "Searched"]

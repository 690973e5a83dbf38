"""retrieve serve's threads (issue 23 item 9): the health probe, the page and the static files never
wait for the index thread, and pictures are decoded, drawn and encoded neither on the event loop
nor on the index thread, so that a picture never holds up a search; and no answer waits for
the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

from retrieval.engine import serving
from retrieval.serve import bind, create_app

LOCAL = "http://127.0.0.1"  # TestClient's own default, http://testserver, is not a name the server answers to
WAIT = 20.0  # seconds a request may take here before it counts as waiting for something it should not


@pytest.fixture(scope="module")
def client(served) -> Iterator[TestClient]:
    with TestClient(create_app(served["index"]), base_url=LOCAL) as c:
        yield c


def _search(c: TestClient, path: Path, **fields: str) -> httpx.Response:
    with open(path, "rb") as f:
        return c.post("/api/search", files={"image": (path.name, f, "image/jpeg")}, data=fields)


def _within(what: str, request: Callable[[], httpx.Response]) -> httpx.Response:
    """request() on a thread of its own; a failure (not a hang) when it takes more than WAIT."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(request).result(timeout=WAIT)
    except FutureTimeout:
        pytest.fail(f"{what} was not answered within {WAIT:g} s")
    finally:
        pool.shutdown(wait=False)


def _blocked(client: TestClient) -> tuple[threading.Event, threading.Thread]:
    """The index thread held by a call that waits for the returned event."""
    started, release = threading.Event(), threading.Event()

    def hold(idx: Any) -> None:
        started.set()
        release.wait(120)

    holder = threading.Thread(target=client.app.state.service.index.run, args=(hold,))  # type: ignore[attr-defined]
    holder.start()
    assert started.wait(60)
    return release, holder


def test_health_page_and_static_files_answer_while_the_index_thread_is_busy(client):
    release, holder = _blocked(client)
    try:
        r = _within("/api/health", lambda: client.get("/api/health"))
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["images"] == 9 and body["busy_s"] > 0  # the probe says so
        for path in ("/", "/static/app.js"):
            assert _within(path, lambda path=path: client.get(path)).status_code == 200
        assert holder.is_alive()  # all of it answered while the index thread was still held
    finally:
        release.set()
        holder.join(60)
    assert client.get("/api/health").json() == {"status": "ok", "images": 9, "busy_s": 0}


def test_pictures_are_made_in_the_picture_pool(client, served, monkeypatch):
    drawn_on: list[str] = []
    draw, load = serving.Correspondences.picture, serving.images.load_image

    def picture(self: serving.Correspondences, kind: str = "matches") -> Image.Image:
        drawn_on.append(threading.current_thread().name)
        return draw(self, kind)

    def load_image(*args: Any, **kwargs: Any) -> Image.Image:
        drawn_on.append(threading.current_thread().name)
        return load(*args, **kwargs)

    body = _search(client, served["query"], k="2").json()
    qid, top = body["query"], body["hits"][0]
    monkeypatch.setattr(serving.Correspondences, "picture", picture)
    monkeypatch.setattr(serving.images, "load_image", load_image)
    for kind in ("matches", "heatmap"):
        r = client.get(f"/api/queries/{qid}/matches/{top['id']}?format=png&kind={kind}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get(f"/api/images/{top['id']}?max=64").status_code == 200
    assert len(drawn_on) == 3
    assert all(name.startswith("retrieval-picture") for name in drawn_on), drawn_on


def test_a_search_is_answered_while_a_picture_is_being_drawn(client, served, monkeypatch):
    started, release = threading.Event(), threading.Event()
    draw = serving.Correspondences.picture

    def slow(self: serving.Correspondences, kind: str = "matches") -> Image.Image:
        started.set()
        release.wait(120)
        return draw(self, kind)

    body = _search(client, served["query"], k="2").json()
    monkeypatch.setattr(serving.Correspondences, "picture", slow)
    pool = ThreadPoolExecutor(max_workers=1)
    png = pool.submit(client.get, f"/api/queries/{body['query']}/matches/{body['hits'][0]['id']}?format=png")
    try:
        assert started.wait(60)
        r = _within("a search", lambda: _search(client, served["query"], k="3"))
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
        assert _within("/api/health", lambda: client.get("/api/health")).status_code == 200
        assert not png.done()  # the picture was still being drawn meanwhile
    finally:
        release.set()
        assert png.result(timeout=60).status_code == 200
        pool.shutdown()


def test_connections_are_answered_without_waiting_for_the_clients_ack():
    """bind()'s sockets name TCP, so asyncio turns Nagle off on each connection (as on those
    create_server binds): with it on, every answer after a connection's first waited ~40 ms for
    the client's delayed ACK, whatever the server had to do."""

    async def nodelay() -> int:
        [sock] = bind("127.0.0.1", 0)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=sock)  # what uvicorn does with them
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                return await asyncio.wait_for(accepted, 30)
            finally:
                writer.close()

    assert asyncio.run(nodelay()) != 0


def test_the_gils_switch_interval_is_short_while_the_server_runs(served):
    """A search crosses threads four times; each hand-off may wait out the GIL's switch interval
    while another thread runs Python, so the server shortens it while it runs, and gives the
    process its own value back when it stops."""
    from retrieval.serve.app import SWITCH_INTERVAL

    found = sys.getswitchinterval()  # this module's client fixture may be serving already
    sys.setswitchinterval(0.005)  # Python's default
    try:
        with TestClient(create_app(served["index"]), base_url=LOCAL):
            assert sys.getswitchinterval() == SWITCH_INTERVAL < 0.005
        assert sys.getswitchinterval() == 0.005
    finally:
        sys.setswitchinterval(found)

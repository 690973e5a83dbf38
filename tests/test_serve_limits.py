"""retrieve serve under hostile or careless clients (issue 23: items 6, 7, 8, 10, 11, 17, 18):
out-of-range ids, disconnects mid-upload, slow and surplus connections, unbounded or oddly
written numbers, state that grows with uptime, the URLs it prints and how fast it refuses.

Live servers listen on 127.0.0.1 only; every client loop below is bounded and stops by itself."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from retrieval.serve import Limits, bind, create_app, server_config

from .conftest import ROOT
from .helpers import Embeds, Server, free_port

MULTIPART_HEAD = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
                  b"Content-Type: image/jpeg\r\n\r\n")


@pytest.fixture(scope="module")
def client(served) -> Iterator[TestClient]:
    with TestClient(create_app(served["index"]), base_url="http://127.0.0.1") as c:
        yield c


def _search(c: Any, path: Path, **fields: str) -> httpx.Response:
    return c.post("/api/search", files={"image": ("q.jpg", path.read_bytes(), "image/jpeg")}, data=fields)


def _one_line_error(r: httpx.Response, status: int, needle: str) -> str:
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert set(r.json()) == {"error"} and "\n" not in message and needle in message, message
    return message


# --- 6: ids out of range ----------------------------------------------------------------------------
@pytest.mark.parametrize("image_id", ["9223372036854775808", "99999999999999999999", "9" * 5000, "٣", "1_0", "+1"])
def test_ids_out_of_range_are_404(client, served, image_id):
    """Before: 500 (OverflowError from SQLite; ValueError past 4300 digits)."""
    qid = _search(client, served["query"], k="1").json()["query"]
    for path in (f"/api/images/{image_id}", f"/api/queries/{qid}/matches/{image_id}",
                 f"/api/queries/{qid}/matches/{image_id}?format=png"):
        message = _one_line_error(client.get(path), 404, "no indexed image with id")
        assert len(message) < 200, message  # the id is shown cut short
    assert client.get(f"/api/images/{2**63 - 1}").status_code == 404  # the largest id: looked up, not there
    assert client.get("/api/images/1").status_code == 200


# --- 10: numbers bounded and written in ASCII digits; echoed values cut short -------------------------
@pytest.mark.parametrize("fields, needle", [
    ({"k": str(10**30)}, "at most 1000"),
    ({"k": "1001"}, "at most 1000"),
    ({"k": "9" * 10_000}, "at most 1000"),
    ({"k": "٣"}, "digits 0-9"),
    ({"k": "1_0"}, "digits 0-9"),
    ({"k": "+3"}, "digits 0-9"),
    ({"k": "0"}, "at least 1"),
    ({"qe": "1001"}, "at most 1000"),
    ({"qe": "٢"}, "digits 0-9"),
    ({"qe": "-1"}, "at least 0"),
    ({"bbox": "1_0,1,50,50"}, "digits 0-9"),
    ({"bbox": "١,1,50,50"}, "digits 0-9"),
    ({"bbox": "1e1,1,50,50"}, "digits 0-9"),
])
def test_numbers_are_bounded_and_strict(client, served, fields, needle):
    message = _one_line_error(_search(client, served["query"], **fields), 400, needle)
    assert len(message) < 200, message


def test_the_bounds_themselves_are_accepted(client, served):
    body = _search(client, served["query"], k="1000", qe=" 2 ", bbox="10,10.5,200,150.").json()
    assert len(body["hits"]) == 9  # the whole (small) index: k=1000 is allowed
    r = client.get(f"/api/images/{body['hits'][0]['id']}?max=4096")
    assert r.status_code == 200
    for bad, needle in (("4097", "at most 4096"), ("١٠٠", "digits 0-9"), ("1_00", "digits 0-9"), ("15", "at least 16")):
        _one_line_error(client.get(f"/api/images/{body['hits'][0]['id']}?max={bad}"), 400, needle)


def test_a_long_query_id_is_not_echoed_whole(client):
    qid = "q" * 10_000
    message = _one_line_error(client.get(f"/api/queries/{qid}/matches/1"), 404, "most recent searches")
    assert len(message) < 300 and qid not in message, len(message)


# --- 11: no state that grows with uptime -------------------------------------------------------------
def test_batcher_state_does_not_grow_with_searches(served):
    """Before: Batcher.batches gained an entry per embedding call for the life of the server."""
    n = 24
    embedded = Embeds()
    with TestClient(create_app(served["index"], on_embed=embedded), base_url="http://127.0.0.1") as c:
        for _ in range(n):
            assert _search(c, served["query"], k="1").status_code == 200
        batcher = c.app.state.service.batcher
        sizes = {name: len(v) for name, v in vars(batcher).items() if hasattr(v, "__len__")}
        assert all(size < n for size in sizes.values()), sizes
        assert (embedded.calls, embedded.queries) == (n, n)


# --- 8: slow and surplus connections, against a live server -------------------------------------------
class _Live(Server):
    """`retrieve serve`'s uvicorn settings (server_config) under `limits`, on a loopback port, in a thread."""

    def __init__(self, app: Any, limits: Limits) -> None:  # not super().__init__: that builds its own config
        self.sockets = bind("127.0.0.1", 0)
        self.port = self.sockets[0].getsockname()[1]
        self.server = uvicorn.Server(server_config(app, limits))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True)

    def __enter__(self) -> _Live:  # type: ignore[override]
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for s in self.sockets:
            s.close()

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.settimeout(0.2)
        return s

    def health(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.port}/api/health", timeout=30).status_code


SHORT = Limits(head_timeout=1.0, body_timeout=1.0, keep_alive=1, max_connections=6)


@pytest.fixture()
def live(served) -> Iterator[_Live]:
    with _Live(create_app(served["index"], body_timeout=SHORT.body_timeout), SHORT) as server:
        yield server


def _trickle(s: socket.socket, pieces: Iterator[bytes], *, every: float = 0.2, most: int = 40) -> bytes | None:
    """Send one piece every `every` seconds, at most `most` of them (8 s: many times the limits),
    reading what comes back. What the server sent before it closed the connection, or None when
    it was still open after the last piece."""
    got = b""
    for _, piece in zip(range(most), pieces):
        try:
            s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return got
        end = time.monotonic() + every
        while time.monotonic() < end:
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return got
            if not data:
                return got
            got += data
    return None


def _endless(first: bytes, then: bytes) -> Iterator[bytes]:
    yield first
    while True:
        yield then


def test_a_client_trickling_its_headers_is_closed(live):
    """Before: a header line every 2 s kept a connection open for ever (any byte reset
    uvicorn's keep-alive timer). Now the head has head_timeout seconds, then 408 and closed."""
    with live.connect() as s:
        got = _trickle(s, _endless(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n".encode(),
                                   b"X-Slow: 1\r\n"))
    assert got is not None, "still open after 40 header lines"
    assert got.startswith(b"HTTP/1.1 408 "), got[:100]
    assert live.health() == 200  # others are served meanwhile and after


def test_an_idle_connection_is_closed(live):
    with live.connect() as s:
        assert _trickle(s, iter([b""] * 40)) == b""  # closed without a word: nothing was asked


def test_a_client_trickling_its_body_gets_408_and_is_closed(live):
    """Before: an upload at 1 byte/s stayed open for as long as the client liked."""
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\nContent-Length: 100000\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode() + MULTIPART_HEAD
    with live.connect() as s:
        got = _trickle(s, _endless(head, b"\xff"))
    assert got is not None, "still open after 40 bytes of body"
    status, _, rest = got.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), got[:200]
    assert b"took longer than 1 s" in rest
    assert live.health() == 200


def test_an_unread_body_does_not_hold_the_connection(live):
    """A request answered without reading its body (a GET with one): the trickled rest of it is
    not a new request head, and the connection is closed head_timeout after the answer."""
    head = f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\nContent-Length: 100000\r\n\r\n".encode()
    with live.connect() as s:
        got = _trickle(s, _endless(head, b"x"))
    assert got is not None and got.startswith(b"HTTP/1.1 200 "), got


def test_connections_beyond_the_limit_are_answered_503(served):
    with _Live(create_app(served["index"]), Limits(max_connections=6)) as live:
        _beyond_the_limit(live)


def _beyond_the_limit(live: _Live) -> None:
    held = [live.connect() for _ in range(6)]
    try:
        time.sleep(0.2)  # the server has accepted them
        with live.connect() as extra:
            got = _trickle(extra, _endless(f"GET /api/health HTTP/1.1\r\nHost: x:{live.port}\r\n\r\n".encode(), b""))
        assert got is not None and got.startswith(b"HTTP/1.1 503 "), got
        assert b"6 connections open" in got
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the held ones are gone (their closing is seen by the server's loop): served again
        try:
            assert live.health() == 200
            break
        except (httpx.TransportError, AssertionError):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_an_oversized_head_is_400_and_closed(live):
    """h11 buffers at most max_head bytes while a head is incomplete (a head that arrives whole
    in one read is parsed whatever its size, and costs no more than that read)."""
    with live.connect() as s:
        got = _trickle(s, _endless(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\nX-Big: ".encode(),
                                   b"x" * 4096))
    assert got is not None and got.startswith(b"HTTP/1.1 400 "), got


def test_a_normal_client_keeps_working_among_slow_ones(live, served):
    slow = [live.connect() for _ in range(3)]
    try:
        for s in slow:
            s.sendall(b"GET /api/health HTTP/1.1\r\n")
        with httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=60) as c:
            for _ in range(3):  # one connection, kept alive between requests
                assert _search(c, served["query"], k="2").status_code == 200
    finally:
        for s in slow:
            s.close()


# --- 7: a client that disconnects mid-upload: one debug line at most (real `retrieve serve`) ------------
def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "retrieval", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_up(proc: subprocess.Popen[str], url: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(url + "api/health", headers=headers, timeout=10)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not answer"
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


@pytest.mark.subprocess
def test_disconnects_mid_upload_are_not_logged_as_errors(served):
    """Before: each one logged a ~50-line ClientDisconnect traceback, twice (ours and uvicorn's)."""
    port = free_port()
    proc = _start("--index", str(served["index"]), "--port", str(port))
    try:
        _wait_up(proc, f"http://127.0.0.1:{port}/")
        head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100000\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode() + MULTIPART_HEAD
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head + b"\xff" * 1000)
                time.sleep(0.05)  # the server is reading the body when the client goes
        r = httpx.post(f"http://127.0.0.1:{port}/api/search", timeout=60,
                       files={"image": ("q.jpg", served["query"].read_bytes())})
        assert r.status_code == 200
    finally:
        _, err = _stop(proc)
    lines = [x for x in err.splitlines() if x.strip() and "random weights" not in x]
    assert lines == [], err[-3000:]


# --- 17: the URLs printed for a wildcard address (real `retrieve serve`) --------------------------------
@pytest.mark.subprocess
def test_a_wildcard_host_prints_urls_that_work(served):
    """Before: `http://0.0.0.0:PORT/?token=...`, an address no browser can open. Now loopback's URL,
    then this machine's other addresses; each one answers."""
    proc = _start("--index", str(served["index"]), "--host", "0.0.0.0", "--port", "0", "--token", "t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not lines:
            assert time.monotonic() < deadline and proc.poll() is None, "nothing printed"
            time.sleep(0.1)
        printed = re.findall(r"(http://\S+/)\?token=\.\.\.", lines[0])
        assert lines[0].startswith(f"serving {served['index']} on http://127.0.0.1:"), lines
        _wait_up(proc, printed[0], auth)  # everything is printed before the server starts
        printed += [u for line in lines[1:] for u in re.findall(r"^  also on (http://\S+/)\?token=\.\.\.$", line)]
        assert len(printed) == len(lines), lines
        assert "0.0.0.0" not in "".join(lines)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("192.0.2.1", 9))  # UDP: nothing is sent
                routed = True
            except OSError:
                routed = False
        assert len(printed) >= 1 + routed, lines  # a machine with a route has an address others reach
        for url in printed:  # each printed address reaches this server
            assert httpx.get(url + "api/health", headers=auth, timeout=30).status_code == 200, url
    finally:
        _stop(proc)


# --- 18: a refused --host is refused before the model (torch) is imported --------------------------
_PROBE = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps("torch" in sys.modules)))
sys.argv = ["retrieve", *sys.argv[2:]]
from retrieval.cli import app
app()
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("args, needle", [
    (["--host", "0.0.0.0"], "--token"),
    (["--host", "192.0.2.1"], "--token"),
    (["--max-upload", "lots"], "--max-upload"),
    (["--token", "caf\u00e9"], "--token"),
    (["--allow-host", "http://photos.example/"], "--allow-host"),
])
def test_refusals_come_before_torch_is_imported(served, tmp_path, args, needle):
    """Before: the refusal came after the engine (torch) was imported: 8 s on the tester's machine."""
    seen = tmp_path / "torch.json"
    r = subprocess.run([sys.executable, "-c", _PROBE, str(seen), "serve", "--index", str(served["index"]), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert json.loads(seen.read_text()) is False  # torch was never imported

"""retrieve serve against other web pages (docs/serve.md, "Security"), over real HTTP: the Host must
name the server (DNS rebinding), requests a browser marks as another origin's are refused, /api
answers are same-origin resources, and the token is read as RFC 6750 says. The same attacks from
a real browser on a second origin are in test_serve_browser.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from retrieval.cli import app as cli
from retrieval.errors import UsageError
from retrieval.serve import create_app
from retrieval.serve.guard import Hosts, parse_host

from .helpers import Embeds, Server

runner = CliRunner()


@pytest.fixture(scope="module")
def server(served):
    """(base URL, port, its searches counted) of a server on 127.0.0.1 that also answers to photos.lan."""
    searched = Embeds()
    app = create_app(served["index"], allow_hosts=["photos.lan"], on_embed=searched)
    with Server(app) as url:
        yield url, int(url.rsplit(":", 1)[1]), searched


def _post(url: str, path: Path, headers: dict[str, str] | None = None) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(f"{url}/api/search", files={"image": ("q.jpg", f, "image/jpeg")}, data={"k": "1000"},
                          headers=headers or {}, timeout=60)


def _refused(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert set(r.json()) == {"error"} and "images" not in r.text  # nothing of the index in the refusal
    assert r.headers["cross-origin-resource-policy"] == "same-origin"


# --- 1 and 4: the Host header must name this server --------------------------------------------------
def test_a_foreign_host_is_refused_on_every_route_with_one_log_line(server, served, caplog):
    """Before: any Host was answered, so a page at rebind.example:PORT (re-pointed at 127.0.0.1)
    read /api/info, searched with k=1000000 and downloaded every photo."""
    url, port, searched = server
    for host in [f"rebind.example:{port}", "rebind.example", f"127.0.0.1.nip.io:{port}", "localhost.evil.example",
                 f"photos.lan.evil.example:{port}", "evil.example:80"]:
        for path in ["/api/info", "/api/health", "/api/images/1", "/api/queries/x/matches/1", "/", "/static/app.js"]:
            _refused(httpx.get(url + path, headers={"Host": host}), 400)
        caplog.clear()
        before = searched.queries
        with caplog.at_level(logging.WARNING, logger="retrieval.serve"):
            _refused(_post(url, served["query"], {"Host": host}), 400)
        assert searched.queries == before  # nothing searched
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("retrieval.serve")]
        assert len(lines) == 1 and host in lines[0] and "\n" not in lines[0], lines


def test_names_of_this_server_are_answered(server):
    url, port, _ = server
    for host in [f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LocalHost", f"[::1]:{port}", "[::1]",
                 f"[0:0:0:0:0:0:0:1]:{port}", f"127.0.0.2:{port}", f"photos.lan:{port}", "PHOTOS.LAN"]:
        r = httpx.get(url + "/api/health", headers={"Host": host})
        assert r.status_code == 200 and r.json()["images"] == 9, host
    assert httpx.get(url + "/api/health").status_code == 200  # curl-like: no Origin, no Sec-Fetch-*


def test_a_malformed_host_is_400(server):
    url, port, _ = server
    for host in ["::1", f"localhost:{port}x", "localhost:99999", "[::1", "[localhost]:80", "a b", "local_host:", ""]:
        _refused(httpx.get(url + "/api/health", headers={"Host": host}), 400)


def _raw(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_no_host_is_a_program_and_two_are_refused(server):
    """HTTP/1.0 without Host: browsers always send one, so this is a program, answered."""
    _, port, _ = server
    assert _raw(port, b"GET /api/health HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    two = _raw(port, f"GET /api/health HTTP/1.1\r\nHost: localhost:{port}\r\nHost: evil.example\r\n"
                     f"Connection: close\r\n\r\n".encode())
    assert two.startswith(b"HTTP/1.1 400 ") and b'"images"' not in two


def test_the_trailing_slash_redirect_never_names_a_foreign_host(server):
    """Before: `Host: evil.example` got a 307 to http://evil.example/api/health."""
    url, port, _ = server
    r = httpx.get(url + "/api/health/", headers={"Host": "evil.example"})
    _refused(r, 400)
    assert "location" not in r.headers
    r = httpx.get(url + "/api/health/", headers={"Host": f"localhost:{port}"})
    assert r.status_code == 307 and r.headers["location"] == f"http://localhost:{port}/api/health"


def test_hosts_of_the_bound_address():
    assert parse_host("LocalHost:8000") == ("localhost", 8000) and parse_host("[::1]") == ("::1", None)
    one = Hosts.of("192.168.1.5")
    assert one.allows("192.168.1.5") and one.allows("127.0.0.1") and one.allows("::1") and one.allows("localhost")
    assert not one.allows("192.168.1.6") and not one.allows("photos.lan")
    named = Hosts.of("photos.lan", allow=["proxy.example", "10.0.0.5"])
    assert named.allows("photos.lan") and named.allows("proxy.example") and named.allows("10.0.0.5")
    assert not named.allows("10.0.0.6")
    import socket

    for wildcard in ["0.0.0.0", "::", "[::]"]:  # all addresses: any address names it, and so does its host name
        every = Hosts.of(wildcard)
        assert every.allows("10.1.2.3") and every.allows(socket.gethostname().lower())
        assert not every.allows("rebind.example")
    for bad in ["http://photos.lan", "photos.lan:8000", "photos.lan/", "a b", ""]:
        with pytest.raises(UsageError, match="--allow-host"):
            Hosts.of("127.0.0.1", allow=[bad])


def test_cli_passes_the_host_and_allowed_names(served, monkeypatch):
    import retrieval.serve

    seen: dict[str, Any] = {}

    def record(index: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(retrieval.serve, "create_app", record)
    r = runner.invoke(cli, ["serve", "--index", str(served["index"]), "--port", "0", "--host", "localhost",
                            "--allow-host", "photos.lan", "--allow-host", "proxy.example"])
    assert r.exit_code == 2 and "stop here" in r.output, r.output
    assert seen["host"] == "localhost" and list(seen["allow_hosts"]) == ["photos.lan", "proxy.example"]


# --- 2 and 3: requests a browser marks as another origin's ------------------------------------------
def test_cross_origin_requests_are_refused(server, served):
    """Before: <img src=http://127.0.0.1:PORT/api/images/5> loaded on any site, and a POST with
    Origin: http://evil.example searched (200), evicting the user's cached queries."""
    url, port, searched = server
    foreign = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{port + 1}"},
               {"Origin": f"http://localhost:{port}"}, {"Origin": f"https://127.0.0.1:{port}x"},
               {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
               {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}]
    before = searched.queries
    for headers in foreign:
        for path in ["/api/info", "/api/images/1", "/api/images/1?max=64", "/static/app.js"]:
            _refused(httpx.get(url + path, headers=headers), 403)
        _refused(_post(url, served["query"], headers), 403)
    assert searched.queries == before  # none of them searched


def test_the_pages_own_requests_and_programs_pass(server, served):
    url, port, searched = server
    own = [{}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
           {"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{port}"},
           {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
           {"Origin": "https://photos.lan", "Host": "photos.lan"}]  # behind a TLS proxy that keeps the Host
    for headers in own:
        r = httpx.get(url + "/api/images/1?max=32", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", headers
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
        before = searched.queries
        assert _post(url, served["query"], headers).status_code == 200, headers
        assert searched.queries == before + 1


def test_a_link_from_another_site_opens_the_page_but_not_the_api(server):
    url, _, _ = server
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    r = httpx.get(url + "/", headers=link)
    assert r.status_code == 200 and "<html" in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    _refused(httpx.get(url + "/api/info", headers=link), 403)
    _refused(httpx.post(url + "/", headers=link), 403)


# --- 5: the token ---------------------------------------------------------------------------------
def test_token_scheme_in_any_case_and_401_says_how(served):
    """Before: `bearer TOKEN` was 401, and no 401 had a WWW-Authenticate header."""
    with Server(create_app(served["index"], token="s3cret")) as url:
        for given in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer  s3cret"]:
            assert httpx.get(url + "/api/health", headers={"Authorization": given}).status_code == 200, given
        for given in [None, "Bearer wrong", "Basic s3cret", "Bearer", "s3cret", "Bearer s3cret s3cret"]:
            r = httpx.get(url + "/api/health", headers={} if given is None else {"Authorization": given})
            _refused(r, 401)
            assert r.headers["www-authenticate"].startswith('Bearer realm="retrieve serve"'), given
        r = httpx.get(url + "/api/health", headers={"Authorization": "Bearer s3cr\xe9t".encode()})
        _refused(r, 401)  # other bytes than the token's: refused, never a server error
        r = httpx.get(url + "/api/health", headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"})
        _refused(r, 403)  # the token does not make another site's request the page's own


@pytest.mark.parametrize("token", ["pässwort", "two words", "tab\there", "\u2603"])
def test_a_token_a_browser_cannot_send_is_refused_at_start(served, monkeypatch, token):
    """Before: a non-ASCII token started the server, then failed for every client sending UTF-8
    (the header was decoded as Latin-1), and the page could not send it at all."""
    import uvicorn

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server started with a token a browser cannot send")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    r = runner.invoke(cli, ["serve", "--index", str(served["index"]), "--port", "0", "--token", token])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "--token must be printable ASCII" in lines[0] and "openssl rand" in lines[0], lines
    with pytest.raises(UsageError, match="printable ASCII"):
        create_app(served["index"], token=token)

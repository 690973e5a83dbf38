"""What every request of `retrieve serve` meets first (docs/serve.md, "Security"): pure ASGI middleware.

    app.add_middleware(Guard, token=None, hosts=Hosts.of("127.0.0.1", allow=["photos.lan"]))

A server on loopback is reachable from every web page the user opens, so before any route runs:
- the Host header must name this server (Hosts): a page whose name an attacker re-points at
  127.0.0.1 (DNS rebinding) is refused with 400, and nothing ever builds a URL from a foreign Host
  (not 421 Misdirected Request: Chromium sends a 421 request again on a new connection);
- a request a browser says comes from another origin (Sec-Fetch-Site other than same-origin or
  none, or an Origin that is not the Host's own) is refused with 403; only a top-level navigation
  to the page (not /api/) is exempt, so a link from elsewhere still opens it;
- with a token, every /api/ request must carry `Authorization: Bearer TOKEN` (scheme in any case,
  the token compared as bytes); 401 says so in WWW-Authenticate.
Every answer, refusals included, carries headers that keep the page's content its own:
Cross-Origin-Resource-Policy same-origin, no sniffing, no framing, a CSP.
Programs (curl, httpx) send no Origin or Sec-Fetch-* headers and pass, given a Host that names us.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError
from ..types import shown

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_DEFAULT_PORT = {"http": 80, "https": 443}
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # what a browser's fetch can send in a header, and no spaces
_SAME = ("same-origin", "none")  # Sec-Fetch-Site values of the page itself, or of the user typing the URL
_HEADERS = [
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
     b"frame-ancestors 'none'; form-action 'none'"),
]


def parse_host(value: str) -> tuple[str, int | None] | None:
    """'LocalHost:8000' -> ('localhost', 8000), '[::1]' -> ('::1', None); None when malformed
    (an IPv6 address without brackets, a port that is not a number, odd characters)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = value.partition(":")
        port = port_text if colon else None
        if not _NAME.match(host):
            return None
    if port is not None and (not _PORT.match(port) or not 0 < int(port) < 65536):
        return None
    return host, None if port is None else int(port)


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class Hosts:
    """The names and addresses a Host header may give. An IP address cannot be re-pointed by DNS,
    so loopback addresses always pass, and any address when the server listens on all of them."""

    names: frozenset[str]
    addresses: frozenset[IPAddress]
    any_address: bool = False

    @classmethod
    def of(cls, bound: str, *, allow: Iterable[str] = ()) -> Hosts:
        """Hosts for a server listening on `bound` (as --host takes it), plus the --allow-host names.
        Listening on all addresses (0.0.0.0, ::) adds any address and this machine's host name."""
        bound = bound.strip().strip("[]").lower()
        ip = _address(bound)
        wildcard = bound == "" or (ip is not None and ip.is_unspecified)
        names = {"localhost"} | ({socket.gethostname().lower()} if wildcard else set())
        addresses: set[IPAddress] = set()
        if ip is not None:
            addresses.add(ip)
        elif bound:
            names.add(bound)
        for name in allow:
            parsed = parse_host(name)
            if parsed is None or parsed[1] is not None:
                raise UsageError(f"--allow-host takes a host name or address, such as photos.example or 10.0.0.5 "
                                 f"(no scheme, port or path), got {shown(name)!r}")
            ip = _address(parsed[0])
            if ip is None:
                names.add(parsed[0])
            else:
                addresses.add(ip)
        return cls(frozenset(names), frozenset(addresses), wildcard)

    def allows(self, host: str) -> bool:
        """Whether `host` (as parse_host gives it: lower case, no brackets) names this server."""
        ip = _address(host)
        if ip is None:
            return host in self.names
        return ip.is_loopback or ip in self.addresses or self.any_address


def check_token(token: str | None) -> None:
    """UsageError unless the token is printable ASCII without spaces: a browser sends a header's
    other characters as Latin-1 bytes or not at all, so the page could never use it."""
    if token is not None and not _TOKEN.match(token):
        raise UsageError("--token must be printable ASCII without spaces (a browser cannot send other characters "
                         "in a header); fix: use a random one such as $(openssl rand -hex 16)")


class Guard:
    """The Host, cross-origin and token checks of the module docstring, then the security headers."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, token: str | None,
                 hosts: Hosts) -> None:
        self.app, self.hosts = app, hosts
        self.token = None if token is None else token.encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _HEADERS
            await send(message)

        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send_secured)
            return
        status, text, extra = refusal
        body = json.dumps({"error": text}).encode("ascii")
        await send_secured({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
        await send_secured({"type": "http.response.body", "body": body})

    def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, message, extra headers) of a refused request; None for one that may go on."""
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, []).append(value)
        given = [v.decode("latin-1") for v in headers.get(b"host", [])]
        host = parse_host(given[0]) if len(given) == 1 else None
        what = f"{scope['method']} {shown(scope['path'])[:200]}"
        if given and host is None:
            log.warning("refused %s: malformed Host header %s", what, _quoted(given))
            return 400, f"malformed Host header {_quoted(given)}", []
        if host is not None and not self.hosts.allows(host[0]):
            log.warning("refused %s: Host %s is not a name of this server (DNS rebinding?)", what, _quoted(given))
            return 400, (f"this server does not answer to the name {_quoted(given)}; open it as localhost or "
                         f"127.0.0.1, or start it with --allow-host NAME"), []
        foreign = self._foreign(scope, headers, host)
        if foreign is not None:
            log.warning("refused %s: %s", what, foreign)
            return 403, f"refused {foreign}: open the page of this server itself", []
        if self.token is not None and scope["path"].startswith("/api/"):
            return self._unauthorized(headers.get(b"authorization", []))
        return None

    def _foreign(self, scope: Scope, headers: dict[bytes, list[bytes]],
                 host: tuple[str, int | None] | None) -> str | None:
        """Why the browser's own headers say the request comes from another origin, or None."""
        def one(name: bytes) -> str | None:
            values = headers.get(name)
            return None if values is None else values[0].decode("latin-1")

        if (one(b"sec-fetch-mode") == "navigate" and one(b"sec-fetch-dest") == "document"
                and scope["method"] in ("GET", "HEAD") and not scope["path"].startswith("/api/")):
            return None  # a link from elsewhere opens the page; X-Frame-Options keeps it out of frames
        site, origin = one(b"sec-fetch-site"), one(b"origin")
        if site is not None and site not in _SAME:
            return f"a {shown(site)[:40]} request (Sec-Fetch-Site) from {_quoted([origin or 'another page'])}"
        if origin is not None and not _same_origin(origin, host):
            return f"a request from the foreign Origin {_quoted([origin])}"
        return None

    def _unauthorized(self, given: list[bytes]) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        scheme, _, credentials = (given[0] if len(given) == 1 else b"").strip().partition(b" ")
        assert self.token is not None
        if scheme.lower() == b"bearer" and secrets.compare_digest(credentials.strip(b" \t"), self.token):
            return None
        why = "missing" if not given else "wrong"
        challenge = b'Bearer realm="retrieve serve"' + (b', error="invalid_token"' if given else b"")
        return 401, (f"{why} token: send the header Authorization: Bearer <token> "
                     f"(the one `retrieve serve --token` was started with)"), [(b"www-authenticate", challenge)]


def _same_origin(origin: str, host: tuple[str, int | None] | None) -> bool:
    """Whether an Origin header names the server the Host header names (same name, same port)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return False
    if host is None or parts.scheme not in _DEFAULT_PORT or parts.hostname is None or parts.path:
        return False
    default = _DEFAULT_PORT[parts.scheme]
    return (parts.hostname, port or default) == (host[0], host[1] or default)


def _quoted(values: list[str]) -> str:
    return ", ".join(repr(shown(v)[:100]) for v in values) or "''"


__all__ = ["Guard", "Hosts", "check_token", "parse_host"]

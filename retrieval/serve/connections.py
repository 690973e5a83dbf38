"""Connections under limits (docs/serve.md, "Limits"): uvicorn's h11 protocol with a deadline
on each request head and a cap on open connections.

    config = server_config(app, Limits())
    uvicorn.Server(config).run(sockets=bind("127.0.0.1", 8000))

uvicorn has a keep-alive timeout, but any byte received resets it: a client that sends one
header line every few seconds (or an unread body, a byte at a time) held its connection for
ever. Here a request's line and headers must be complete within `head_timeout` seconds of the
connection opening or of the previous answer, however they trickle in; the body of an upload
has its own deadline where the app reads it (serve/app.py). A connection past
`max_connections` is answered 503 and closed before it is read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import Limits

_LINGER = 1.0  # seconds a refused connection is read (and discarded) after its 503, so the client sees it


class _LimitedH11(H11Protocol):
    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refused = True
            self.connections.discard(self)  # not counted while it lingers
            self._answer(503, f"the server has {self.limits.max_connections} connections open, its limit; "
                              f"try again shortly")
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(_LINGER, transport.close)
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's head is complete: its app runs
            self._disarm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()  # the next request's head has head_timeout again (a pipelined one disarms it)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a head came
            self._answer(408, f"the request's line and headers took longer than {self.limits.head_timeout:g} s")
        self.transport.close()

    def _answer(self, status: int, message: str) -> None:
        """A whole answer written outside h11 (which has no request to answer yet), then nothing more."""
        body = json.dumps({"error": message}).encode()
        reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))


def server_config(app: Any, limits: Limits = Limits(), *, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's settings for `app` under `limits` (sockets are passed to Server.run)."""
    protocol = type("LimitedH11", (_LimitedH11,), {"limits": limits})
    return uvicorn.Config(app, http=protocol, log_level=log_level, timeout_keep_alive=limits.keep_alive,
                          limit_concurrency=limits.max_connections + 1,  # requests in flight past it: 503
                          h11_max_incomplete_event_size=limits.max_head)


__all__ = ["server_config"]

"""How uvicorn serves the gateway: HTTP/1.1 (h11) with a deadline on request headers.

uvicorn times out idle keep-alive connections but not a client that trickles a
request's headers: such a socket stayed open for minutes. `SlowHeadersProtocol`
answers 408 and closes when a request's headers are not complete within
`header_timeout_s` of the connection, or of the first bytes of a later request
on it (an idle keep-alive connection is uvicorn's `timeout_keep_alive`'s). The
body's own idle timeout is the ingress middleware's (ingress.BodyLimit: 408).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from musicsplit.gateway.settings import GatewaySettings


def _408(message: str) -> bytes:
    body = json.dumps({"error": message, "code": "request_timeout"}).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()
    return head + body


class SlowHeadersProtocol(H11Protocol):
    header_timeout_s = 10.0  # set per server by `protocol()`

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # this request's headers are in
            self._cancel_header_timer()
        elif getattr(self, "_header_timer", None) is None and not self.transport.is_closing():
            # A later request on a kept-alive connection has begun: its headers get the same deadline.
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered (pipelining): its own deadline applies
        self.transport.write(_408(f"the request's headers did not arrive within {self.header_timeout_s:g} s; "
                                  "send them at once"))
        self.transport.close()


class RedactQuery(logging.Filter):
    """Access-log lines without query strings: they carry progress tickets (and, from careless
    clients, API keys), which a log must not keep. The path stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access line: (client, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?<redacted>", *args[3:])
        return True


def redact_access_log() -> None:
    """Install RedactQuery on uvicorn's access logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuery) for f in access.filters):
        access.addFilter(RedactQuery())


def protocol(header_timeout_s: float) -> type[SlowHeadersProtocol]:
    return type("GatewayHTTPProtocol", (SlowHeadersProtocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_config(app: Any, settings: GatewaySettings, **overrides: Any) -> uvicorn.Config:
    """The server for `app` as the gateway runs it (the CLI and the tests alike)."""
    options = dict(host=settings.host, port=settings.port, log_level="info", ws="websockets-sansio",
                   timeout_keep_alive=settings.keepalive_s, http=protocol(settings.header_timeout_s))
    config = uvicorn.Config(app, **{**options, **overrides})  # configures uvicorn's loggers
    redact_access_log()
    return config

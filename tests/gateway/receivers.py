"""Local HTTP receivers standing in for Slack, PagerDuty, Sentry, and a recording
reverse proxy in front of a predictor: they keep what arrives for the test to check."""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class Receiver:
    """Answers every POST with `status` and records (path, headers, body)."""

    def __init__(self, status: int = 202, forward_to: str | None = None, port: int = 0):
        self.requests: list[tuple[str, dict, bytes]] = []
        self.status = status
        self.forward_to = forward_to
        self.busy_until = 0.0  # time.monotonic() before which forwarded POSTs get 429 (a saturated predictor)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self, method):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.path, headers, body))
                if outer.forward_to and method == "POST" and time.monotonic() < outer.busy_until:
                    busy = b'{"error": "all inference places are taken; retry later"}'
                    self.send_response(429)
                    self.send_header("retry-after", "1")
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(busy)))
                    self.end_headers()
                    self.wfile.write(busy)
                    return
                if outer.forward_to:
                    fwd = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
                    r = httpx.request(method, outer.forward_to + self.path, content=body, headers=fwd, timeout=60)
                    self.send_response(r.status_code)
                    for k, v in r.headers.items():
                        if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                            self.send_header(k, v)
                    self.send_header("content-length", str(len(r.content)))
                    self.end_headers()
                    self.wfile.write(r.content)
                    return
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_POST(self):
                self._handle("POST")

            def do_GET(self):
                self._handle("GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def posts(self, prefix: str = "") -> list[tuple[str, dict, bytes]]:
        return [r for r in list(self.requests) if r[0].startswith(prefix)]

    def json_bodies(self, prefix: str = "") -> list[dict]:
        return [json.loads(b) for p, h, b in self.posts(prefix)]


def sentry_events(receiver: Receiver) -> list[dict]:
    """Events inside the Sentry envelopes received (newline-delimited JSON, maybe gzip)."""
    events = []
    for path, headers, body in receiver.posts("/api/"):
        encoding = headers.get("content-encoding")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":  # sentry-sdk compresses with brotli when the module is importable
            import brotli

            body = brotli.decompress(body)
        lines = body.split(b"\n")
        for i, line in enumerate(lines[1:], start=1):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("type") == "event" and i + 1 < len(lines):
                events.append(json.loads(lines[i + 1]))
    return events

"""Idle client connections stay open longer than the load balancer in front keeps them.

Found by the load test: at uvicorn's default 5 s keep-alive, a client (k6, or an
ingress reusing its upstream connection) that sends an upload just as the
gateway closes the idle connection gets a reset, not an answer.
"""

from __future__ import annotations

import http.client
import select
import time
from urllib.parse import urlparse

import pytest

from musicsplit.localstack import start_gateway


def connect(url: str) -> http.client.HTTPConnection:
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=10)


def live(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/v2/health/live")
    response = conn.getresponse()
    response.read()
    return response.status


def closed_by_server(sock, timeout: float) -> float | None:
    """Seconds until the server closes the idle socket (EOF), or None within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable and sock.recv(1) == b"":
            return time.monotonic() - start
    return None


@pytest.fixture
def gateway(request, baseline_url, tmp_path):
    gw = start_gateway([("dsp-baseline", baseline_url)], data_dir=tmp_path / "gw", log_dir=tmp_path,
                       default_model="dsp-baseline", env=getattr(request, "param", None))
    yield gw
    gw.stop()


@pytest.mark.slow
@pytest.mark.parametrize("gateway", [{"MUSICSPLIT_GATEWAY_KEEPALIVE_S": "2"}], indirect=True)
def test_idle_connections_close_after_the_configured_keepalive(gateway):
    conn = connect(gateway.url)
    assert live(conn) == 200
    sock = conn.sock
    idle = closed_by_server(sock, timeout=8.0)
    assert idle is not None and 1.5 <= idle <= 4.0


@pytest.mark.slow
def test_the_default_keepalive_outlasts_uvicorns_five_seconds(gateway):
    conn = connect(gateway.url)
    assert live(conn) == 200
    sock = conn.sock
    assert closed_by_server(sock, timeout=7.0) is None  # still open past 5 s idle
    assert live(conn) == 200 and conn.sock is sock  # and the same connection answers

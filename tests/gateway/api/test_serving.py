"""How the gateway is served: access-log lines keep no query string (tickets, keys)."""

from __future__ import annotations

import logging

import httpx

from tests.gateway.conftest import GatewayThread, make_settings


def test_the_access_log_keeps_paths_but_not_query_strings(tmp_path, caplog):
    with GatewayThread(make_settings(tmp_path, [])) as gw:
        access = logging.getLogger("uvicorn.access")  # uvicorn's: it does not propagate to the root
        access.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.INFO, logger="uvicorn.access"):
                httpx.get(f"{gw.url}/v2/health/live?ticket=tk_secret123&api_key=sk-live-42")
        finally:
            access.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/v2/health/live?<redacted>" in line for line in lines), lines
    assert not any("tk_secret123" in line or "sk-live-42" in line for line in lines), lines

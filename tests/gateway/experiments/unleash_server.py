"""A real Unleash server (npm unleash-server 7.5) on 127.0.0.1, on a database of the
run's PostgreSQL (tests/fixtures/postgres.py), started and stopped by the test that uses it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from musicsplit.localstack import terminate
from tests.fixtures.postgres import PG_BIN
from tests.gateway.conftest import free_port

UNLEASH_DIR = Path(os.environ.get("UNLEASH_SERVER_DIR", "/opt/musicsplit/unleash-server"))
UNLEASH_JS = UNLEASH_DIR / "node_modules" / "unleash-server" / "dist" / "server.js"
ADMIN_TOKEN = "*:*.musicsplit-test-admin-token"
CLIENT_TOKEN = "default:development.musicsplit-test-client-token"


def available() -> str | None:
    """Why the server cannot run here, or None."""
    if not (PG_BIN / "initdb").exists():
        return "PostgreSQL 15 is not installed (apt-get install postgresql)"
    if not UNLEASH_JS.exists():
        return f"unleash-server is not installed in {UNLEASH_DIR} (run .ci/install-gateway.sh)"
    if not shutil.which("node"):
        return "node is not installed"
    return None


class Unleash:
    def __init__(self, database_url: str, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": database_url, "DATABASE_SSL": "false", "HTTP_PORT": str(self.port),
               "HTTP_HOST": "127.0.0.1", "INIT_ADMIN_API_TOKENS": ADMIN_TOKEN,
               "INIT_BACKEND_API_TOKENS": CLIENT_TOKEN, "LOG_LEVEL": "warn", "CHECK_VERSION": "false",
               "SEND_TELEMETRY": "false", "UNLEASH_VERSION_CHECK": "false", "NODE_ENV": "production"}
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(["node", str(UNLEASH_JS)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=str(UNLEASH_DIR))
        self.log_path = log_path

    def wait(self, timeout: float = 180.0) -> "Unleash":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unleash-server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"unleash-server not up in {timeout} s: {self.log_path.read_text()[-3000:]}")

    def admin(self, method: str, path: str, json: dict | None = None) -> httpx.Response:
        r = httpx.request(method, f"{self.url}/api/admin{path}", json=json, timeout=30,
                          headers={"Authorization": ADMIN_TOKEN})
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r

    def stop(self) -> None:
        terminate(self.proc, timeout=15)
        self.log.close()

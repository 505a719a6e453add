"""A real Unleash server (npm unleash-server 7.5) on a real PostgreSQL (Debian), both on
127.0.0.1 ports, in a temp dir, started and stopped by the test that uses them."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from musicsplit.localstack import terminate
from .conftest import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
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


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:  # postgres refuses to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@dataclass
class Postgres:
    root: Path
    port: int

    @classmethod
    def start(cls) -> "Postgres":
        root = Path(tempfile.mkdtemp(prefix="musicsplit-pg-"))
        os.chmod(root, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        port = free_port()
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-sync"])
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "pg.log"), "-w", "-t", "60",
                      "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        pg = cls(root, port)
        _as_postgres([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                      "CREATE DATABASE unleash"])
        return pg

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/unleash"

    def stop(self) -> None:
        try:
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


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

"""Gateway fixtures: a real gateway (uvicorn on 127.0.0.1) in a thread of the test process.

In-process so a test can swap the tracer provider or read metrics; the HTTP
and WebSocket traffic is still real sockets. Predictors are the shared
session fixtures from tests/conftest.py (real processes).
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
import yaml

from musicsplit.gateway.app import create_app
from musicsplit.gateway.tenancy.auth import key_hash
from musicsplit.gateway.storage.database import database_url
from musicsplit.gateway.storage.jobstore import SeparationJob, SqlJobStore, open_job_store
from musicsplit.gateway.api.serving import uvicorn_config
from musicsplit.gateway.settings import Endpoint, GatewaySettings
from musicsplit.localstack import free_port
from tests.fixtures.redis import RedisServer


class GatewayThread:
    """`create_app(settings)` served by uvicorn on a free port, in a daemon thread; /metrics on
    another free port (`metrics_url`) unless the settings name one."""

    def __init__(self, settings: GatewaySettings):
        if settings.metrics_port == GatewaySettings.model_fields["metrics_port"].default:
            settings = settings.model_copy(update={"metrics_port": free_port()})
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        self.app = create_app(settings)
        config = uvicorn_config(self.app, settings, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def service(self):
        return self.app.state.service

    def job(self, job_id: str) -> SeparationJob | None:
        """A job's row as stored (the internal result fields included), read by a store of the test's own."""
        return asyncio.run(_read(self.settings, lambda store: store.get(job_id, tenant=None)))

    def observations(self) -> list[dict]:
        return asyncio.run(_read(self.settings, lambda store: store.observations()))

    def start(self, timeout: float = 20.0) -> "GatewayThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            if not self.thread.is_alive():
                raise RuntimeError("gateway thread exited during start-up")
            time.sleep(0.02)
        raise TimeoutError("gateway did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


async def _read(settings: GatewaySettings, query):
    store = await open_job_store(settings)
    try:
        return await query(store)
    finally:
        await store.close()


def tenants_file(path: Path, tenants: dict[str, dict], keys: dict[str, str] | None = None) -> Path:
    """Write a tenants file; `keys` (tenant -> API key) are stored as their hashes, as an operator would."""
    doc = {name: dict(spec) for name, spec in tenants.items()}
    for name, key in (keys or {}).items():
        doc.setdefault(name, {}).setdefault("api_keys_sha256", []).append(key_hash(key))
    path.write_text(yaml.safe_dump({"tenants": doc}))
    return path


def bearer(key: str, user: str | None = None, **headers) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **({"X-User-Id": user} if user else {}), **headers}


def make_settings(tmp: Path, endpoints: list[tuple[str, str, str]], **overrides) -> GatewaySettings:
    base = dict(
        data_dir=tmp, endpoints=[Endpoint(model=m, url=u, region=r) for m, u, r in endpoints],
        default_model=endpoints[0][0] if endpoints else "dsp-baseline", health_interval_s=0.5,
        retry_max_wait_s=0.3, breaker_reset_s=2.0, sweep_interval_s=3600, cache_backend="disk",
        chunk_seconds=4.0, chunk_overlap_seconds=0.5, chunk_concurrency=2, chunk_window=4,
        request_timeout_s=60.0,
    )
    base.update(overrides)
    return GatewaySettings(**base)


def tone(seconds: float = 2.0, rate: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A small deterministic 'song': two tones, a bass line and noise bursts, [C, T] float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
    x = x + 0.05 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0.7)
    out = np.stack([x, 0.9 * x][:channels]).astype(np.float32)
    return out


def wav_bytes(samples: np.ndarray, rate: int = 44100, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples.T, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def wait_job(url: str, job_id: str, timeout: float = 60.0, until=("succeeded", "failed", "cancelled"),
             headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = httpx.get(f"{url}/v1/separations/{job_id}", headers=headers, timeout=10).json()
        if doc["status"] in until:
            return doc
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {doc['status']} after {timeout} s")


def submit(url: str, data: bytes, *, user: str | None = None, filename: str = "song.wav",
           headers: dict[str, str] | None = None, **form) -> httpx.Response:
    headers = {**({"X-User-Id": user} if user else {}), **(headers or {})}
    return httpx.post(f"{url}/v1/separations", files={"file": (filename, data, "audio/wav")},
                      data={k: str(v) for k, v in form.items()}, headers=headers, timeout=60)


@pytest.fixture
def redis_server(tmp_path):
    """A Redis of the test's own (tests/fixtures/redis.py), stopped at its end."""
    server = RedisServer.start(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def gateway_factory(tmp_path):
    """Start gateways on demand; all stopped at the end of the test."""
    started: list[GatewayThread] = []

    def start(endpoints, data_dir: Path | None = None, **overrides) -> GatewayThread:
        gw = GatewayThread(make_settings(data_dir or tmp_path / f"gw{len(started)}", endpoints, **overrides))
        started.append(gw)
        return gw.start()

    yield start
    for gw in reversed(started):
        gw.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def job_store_url(request, tmp_path):
    """The job store's URL, once on SQLite and once on a real PostgreSQL (tests/fixtures/postgres.py)."""
    if request.param == "sqlite":
        return database_url(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    return database_url(request.getfixturevalue("postgres").database())


@pytest.fixture
async def job_store(job_store_url):
    s = await SqlJobStore.open(job_store_url)
    yield s
    await s.close()


@pytest.fixture
def black_hole():
    """A port that accepts connections and never answers (a hung predictor)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()

"""Two gateway processes on one PostgreSQL, one S3 API and one Redis: replica A is SIGKILLed
mid-job, replica B takes the job over when A's lease expires and finishes it from A's last
checkpointed chunk. Nothing a user sees is lost or done twice: the WebSocket on B shows progress
that never goes backwards and ends succeeded, B separates only the chunks A had not finished
(counted at the predictor), and the stems, downloaded by presigned URL from B, are bit for bit
those of an uninterrupted single-replica run."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import connect

from musicsplit.gateway.storage.database import database_url
from musicsplit.gateway.storage.jobstore import SqlJobStore
from musicsplit.localstack import start_gateway, wait_until

from tests.gateway.conftest import GatewayThread, make_settings, submit, tone, wait_job, wav_bytes

pytestmark = pytest.mark.slow

# Many small chunks one at a time: the job is still mid-way when its replica is killed.
CHUNKING = {"chunk_seconds": 1.5, "chunk_overlap_seconds": 0.5, "chunk_concurrency": 1, "cache_backend": "none"}
TRACK = dict(seconds=30.0, channels=1, seed=701)


def predictor_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("musicsplit_requests_total{") and 'outcome="success"' in line)


def stems_of(url: str, doc: dict) -> dict[str, np.ndarray]:
    out = {}
    for stem, path in doc["stems"].items():
        r = httpx.get(url + path)
        assert r.status_code in (200, 307), r.text
        if r.status_code == 307:  # S3: a presigned URL, fetched from the bucket
            r = httpx.get(r.headers["location"])
        out[stem] = sf.read(io.BytesIO(r.content), dtype="float32", always_2d=True)[0]
    return out


def test_a_replica_killed_mid_job_loses_nothing_and_repeats_nothing(
        baseline_url, postgres, s3, redis_server, logs_dir, tmp_path):
    data = wav_bytes(tone(**TRACK), subtype="PCM_16")

    # The reference: one replica on the embedded backends, never interrupted.
    with GatewayThread(make_settings(tmp_path / "single", [("dsp-baseline", baseline_url, "eu")], **CHUNKING)) as one:
        reference = wait_job(one.url, submit(one.url, data).json()["id"], timeout=60)
        assert reference["status"] == "succeeded"
        expected = stems_of(one.url, reference)
    total = reference["progress"]["chunks_total"]
    assert total >= 25

    db = postgres.database()
    env = {f"MUSICSPLIT_GATEWAY_{k.upper()}": str(v) for k, v in CHUNKING.items()} | {
        "MUSICSPLIT_GATEWAY_DATABASE_URL": db, "MUSICSPLIT_GATEWAY_STORAGE_URL": f"s3://{s3.bucket()}/ms",
        "MUSICSPLIT_GATEWAY_S3_ENDPOINT_URL": s3.endpoint, "MUSICSPLIT_GATEWAY_S3_REGION": "us-east-1",
        "MUSICSPLIT_GATEWAY_EVENTS_BACKEND": "redis", "MUSICSPLIT_GATEWAY_REDIS_URL": redis_server.url,
        "MUSICSPLIT_GATEWAY_LEASE_SECONDS": "3", "MUSICSPLIT_GATEWAY_QUEUE_POLL_S": "0.5",
        "OMP_NUM_THREADS": "1"}
    endpoints = [("dsp-baseline", baseline_url)]
    with ThreadPoolExecutor(2) as pool:  # started side by side: each waits for its own readiness
        replicas = list(pool.map(lambda name: start_gateway(endpoints, data_dir=tmp_path / name, log_dir=logs_dir,
                                                            default_model="dsp-baseline", env=env), ("a", "b")))
    try:
        job = submit(replicas[0].url, data, user="kim").json()
        # Whichever replica claimed the job (A, the one that took the upload, nearly always) is killed.
        owner = wait_until(lambda: (j := asyncio.run(_stored(db, job["id"]))).lease_owner and j.lease_owner, 30,
                           "the job claimed")
        victim = next(p for p in replicas if f"-{p.proc.pid}-" in owner)
        survivor = next(p for p in replicas if p is not victim)
        messages: list[dict] = []

        def follow() -> None:
            with connect(survivor.url.replace("http", "ws", 1) + job["progress_url"], open_timeout=10) as ws:
                for raw in ws:
                    messages.append(json.loads(raw))
                    if messages[-1]["status"] in ("succeeded", "failed", "cancelled"):
                        return

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        wait_until(lambda: any(m["chunks_done"] >= 4 for m in messages), 30,
                   "the survivor's WebSocket shows the victim's progress")
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        before = predictor_requests(baseline_url)
        done_before_kill = max(m["chunks_done"] for m in messages)
        assert done_before_kill < total, "killed mid-job"

        watcher.join(60)
        assert messages and messages[-1]["status"] == "succeeded", messages[-3:]
        done = [m["chunks_done"] for m in messages]
        assert done == sorted(done), f"progress went backwards: {done}"

        separated_after = predictor_requests(baseline_url) - before
        stored = asyncio.run(_stored(db, job["id"]))
        assert f"-{survivor.proc.pid}-" in stored.lease_owner and stored.attempts == 2
        resumed = stored.result["chunks_resumed"]
        assert resumed >= done_before_kill, stored.result  # every chunk shown done was checkpointed
        # The survivor separated only what the victim had not finished (and at most the chunk it had in flight).
        assert separated_after <= total - resumed + 1, f"{separated_after} separated, {resumed} of {total} reloaded"
        assert "took over job" in survivor.log()
        assert "musicsplit_gateway_job_takeovers_total 1.0" in httpx.get(survivor.extra["metrics_url"]).text

        doc = httpx.get(f"{survivor.url}/v1/separations/{job['id']}").json()
        got = stems_of(survivor.url, doc)
        assert set(got) == set(expected)
        for stem in expected:
            assert got[stem].tobytes() == expected[stem].tobytes(), f"{stem} differs from the uninterrupted run"
    finally:
        for proc in replicas:
            proc.stop()


async def _stored(url: str, job_id: str):
    store = await SqlJobStore.open(database_url(url))
    try:
        return await store.get(job_id, tenant=None)
    finally:
        await store.close()

"""Gateway replicas on shared backends (a real PostgreSQL, an S3 API, a real Redis): a job accepted
by one replica runs on another and its progress reaches a WebSocket on the first; large files come
in by presigned upload (only from the caller's own prefix) and stems go out by presigned URL;
readiness is "this replica can take work": predictors or Redis down only degrade it, the job
store down makes it unready. (Killing a replica mid-job: test_takeover.py.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile

import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client import REGISTRY
from websockets.sync.client import connect

from musicsplit.localstack import free_port, wait_until

from .conftest import GatewayThread, bearer, make_settings, submit, tenants_file, tone, wait_job, wav_bytes


KEYS = {"acme": "acme-key-0000000", "globex": "globex-key-00000"}


def metric(name: str, **labels) -> float | None:
    values = [s.value for m in REGISTRY.collect() for s in m.samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return values[-1] if values else None


@pytest.fixture
def shared(postgres, s3, redis_server):
    """The settings of one deployment's shared backends: a fresh database and bucket."""
    return dict(database_url=postgres.database(), storage_url=f"s3://{s3.bucket()}/musicsplit",
                s3_endpoint_url=s3.endpoint, s3_region="us-east-1", events_backend="redis",
                redis_url=redis_server.url, lease_seconds=6.0, queue_poll_s=0.2)


@pytest.fixture
def replicas(tmp_path):
    started: list[GatewayThread] = []

    def start(endpoints, name: str, **overrides) -> GatewayThread:
        gw = GatewayThread(make_settings(tmp_path / name, endpoints, **overrides))
        started.append(gw)
        return gw.start()

    yield start
    for gw in reversed(started):
        gw.stop()


def dead_endpoint() -> list[tuple[str, str, str]]:
    return [("dsp-baseline", f"http://127.0.0.1:{free_port()}", "eu")]


def follow(url: str, job_id: str, headers: dict | None = None, timeout: float = 60.0) -> list[dict]:
    """Every WebSocket progress message of a job until it ends."""
    messages = []
    with connect(url.replace("http", "ws", 1) + f"/v1/separations/{job_id}/progress", open_timeout=10,
                 additional_headers=headers or {}) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages.append(json.loads(ws.recv(timeout=timeout)))
            if messages[-1]["status"] in ("succeeded", "failed", "cancelled"):
                return messages
    raise TimeoutError(messages[-3:])


@pytest.mark.slow
def test_a_job_accepted_by_one_replica_runs_on_another_and_its_progress_crosses_over(
        baseline_url, replicas, shared, redis_server):
    worker = replicas([("dsp-baseline", baseline_url, "eu")], "worker", chunk_concurrency=1, **shared)
    front = replicas(dead_endpoint(), "front", max_running_jobs=0, **shared)  # serves the API, runs nothing
    job = submit(front.url, wav_bytes(tone(16.0, seed=601)), user="kim").json()
    messages = follow(front.url, job["id"])
    assert messages[-1]["status"] == "succeeded"
    done = [m["chunks_done"] for m in messages]
    assert done == sorted(done), f"progress never goes backwards: {done}"
    assert len(set(done)) >= 3 and not any(m.get("heartbeat") for m in messages), \
        f"per-chunk progress came from the worker's events, not from polling: {done}"
    stored = front.job(job["id"])
    assert stored.lease_owner == worker.service.replica and stored.attempts == 1
    # The front replica serves the result of a job it never ran.
    stem = httpx.get(f"{front.url}/v1/separations/{job['id']}/stems/vocals")
    assert stem.status_code == 307 and stem.headers["location"].startswith(shared["s3_endpoint_url"])

    # Redis gone: both replicas still work; progress on the front replica arrives by polling.
    redis_server.stop()
    body = wait_until(lambda: (b := httpx.get(front.url + "/v2/health/ready").json()) and not b["backends"]["events"]
                      and b, 15, "readiness reports events down")
    assert body["ready"] is True and any(d.startswith("events:") for d in body["degraded"])
    assert metric("musicsplit_gateway_backend_up", backend="events") == 0
    job = submit(front.url, wav_bytes(tone(6.0, seed=602)), user="kim").json()
    assert follow(front.url, job["id"])[-1]["status"] == "succeeded"


@pytest.mark.slow
def test_a_large_file_comes_in_by_presigned_upload_and_goes_out_by_presigned_url(
        baseline_url, replicas, shared, tmp_path):
    keys = tenants_file(tmp_path / "tenants.yaml", {"acme": {}, "globex": {}}, KEYS)
    gw = replicas([("dsp-baseline", baseline_url, "eu")], "gw", max_upload_bytes=4_000_000, api_keys_file=keys,
                  **shared)
    acme, globex = bearer(KEYS["acme"]), bearer(KEYS["globex"])
    assert httpx.post(f"{gw.url}/v1/uploads", json={"bytes": 1000}).status_code == 401, "uploads authenticate"
    mix = tone(5.0, seed=611)
    data = wav_bytes(mix, subtype="PCM_16")

    def upload(headers, body: bytes) -> str:
        r = httpx.post(f"{gw.url}/v1/uploads", json={"bytes": len(body)}, headers=headers)
        assert r.status_code == 201, r.text
        slot = r.json()
        assert slot["headers"]["Content-Type"] == "application/octet-stream"
        assert httpx.put(slot["url"], content=body, headers=slot["headers"]).status_code == 200
        return slot["upload_id"]

    upload_id = upload(acme, data)
    key = gw.service.uploads.key("acme", upload_id)
    assert key.startswith("musicsplit/acme/uploads/"), key  # under the authenticated tenant's prefix
    # Another tenant naming it reads under its own prefix: nothing there.
    r = httpx.post(f"{gw.url}/v1/separations", data={"upload_id": upload_id}, headers=globex)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = httpx.post(f"{gw.url}/v1/separations", data={"upload_id": upload_id, "stems": "vocals,drums"},
                   headers=acme)
    assert r.status_code == 202, r.text
    doc = wait_job(gw.url, r.json()["id"], headers=acme)
    assert doc["status"] == "succeeded" and set(doc["stems"]) == {"vocals", "drums"}
    again = httpx.post(f"{gw.url}/v1/separations", data={"upload_id": upload_id}, headers=acme)
    assert again.status_code == 404, "an upload is used once (the job keeps the validated input)"

    r = httpx.get(gw.url + doc["stems"]["vocals"], headers=acme)
    assert r.status_code == 307 and f"/musicsplit/acme/jobs/{doc['id']}/stems/" in r.headers["location"]
    assert httpx.get(gw.url + doc["stems"]["vocals"]).status_code == 401, "downloads authenticate"
    vocals, rate = sf.read(io.BytesIO(httpx.get(r.headers["location"]).content), dtype="float32")
    assert rate == 44100 and vocals.shape == (mix.shape[1], 2)
    assert httpx.get(gw.url + doc["stems"]["vocals"], headers=globex).status_code == 404
    z = httpx.get(gw.url + doc["zip_url"], headers=acme, follow_redirects=True)
    assert sorted(zipfile.ZipFile(io.BytesIO(z.content)).namelist()) == ["drums.wav", "vocals.wav"]

    # Bad input by upload is refused like bad input in the body, and says why.
    bad = httpx.post(f"{gw.url}/v1/separations", data={"upload_id": upload(acme, b"not audio at all")},
                     headers=acme)
    assert bad.status_code == 400 and bad.json()["code"] == "bad_audio"
    big = httpx.post(f"{gw.url}/v1/uploads", json={"bytes": 4_000_001}, headers=acme)
    assert big.status_code == 413 and "4000000" in big.json()["error"]
    for form, files in (({}, None), ({"upload_id": upload_id}, {"file": ("a.wav", data)})):
        r = httpx.post(f"{gw.url}/v1/separations", data=form, files=files, headers=acme)
        assert r.status_code == 400 and "upload_id" in r.json()["error"]
    r = httpx.post(f"{gw.url}/v1/separations", data={"upload_id": "../../etc/passwd"}, headers=acme)
    assert r.status_code == 400


def test_a_gateway_on_local_storage_says_it_offers_no_uploads(gateway_factory):
    gw = gateway_factory(dead_endpoint())
    r = httpx.post(f"{gw.url}/v1/uploads", json={"bytes": 1000})
    assert r.status_code == 501 and r.json()["code"] == "unsupported" and "STORAGE_URL" in r.json()["error"]


@pytest.mark.slow
def test_musicsplit_separate_sends_a_file_over_its_threshold_by_presigned_upload(
        baseline_url, gateway_factory, s3, tmp_path):
    endpoints = [("dsp-baseline", baseline_url, "eu")]
    keys = tenants_file(tmp_path / "tenants.yaml", {"acme": {}}, KEYS)
    on_s3 = gateway_factory(endpoints, storage_url=f"s3://{s3.bucket()}/ms", s3_endpoint_url=s3.endpoint,
                            s3_region="us-east-1", api_keys_file=keys)
    on_disk = gateway_factory(endpoints)
    track = tmp_path / "song.wav"
    track.write_bytes(wav_bytes(tone(3.0, seed=641), subtype="PCM_16"))  # about 0.5 MiB

    def separate(gw, out: str, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, np.ndarray]]:
        done = subprocess.run([sys.executable, "-m", "musicsplit.cli", "separate", str(track), "--url", gw.url,
                               "--model", "dsp-baseline", "--stems", "vocals,drums", "--out", str(tmp_path / out),
                               *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        stems = {s: sf.read(tmp_path / out / f"song.{s}.wav", dtype="float32")[0] for s in ("vocals", "drums")}
        return done, stems

    uploaded, by_upload = separate(on_s3, "upload", "--upload-threshold", "0.1", "--api-key", KEYS["acme"])
    assert "uploaded to storage" in uploaded.stdout
    job_id = uploaded.stdout.split("(job ", 1)[1].split(",", 1)[0]
    job = on_s3.job(job_id)
    assert job.status == "succeeded" and job.tenant == "acme", "the stems came from a job of the key's tenant"
    # Under the threshold (default 30 MiB), and where the gateway has no uploads: one v2 request.
    direct, in_body = separate(on_s3, "direct", "--api-key", KEYS["acme"])
    assert "uploaded to storage" not in direct.stdout and "takes no presigned uploads" not in direct.stderr
    fallback, by_fallback = separate(on_disk, "fallback", "--upload-threshold", "0.1")
    assert "takes no presigned uploads: sending the file in one request" in fallback.stderr
    for stem in ("vocals", "drums"):
        assert by_upload[stem].shape == (3 * 44100, 2)
        np.testing.assert_allclose(by_upload[stem], in_body[stem], atol=1e-4)
        np.testing.assert_allclose(by_fallback[stem], in_body[stem], atol=1e-4)


@pytest.mark.slow
def test_predictors_down_degrade_a_replica_the_job_store_down_makes_it_unready(
        baseline_url, replicas, shared, postgres):
    done_by = replicas([("dsp-baseline", baseline_url, "eu")], "a", **shared)
    doc = wait_job(done_by.url, submit(done_by.url, wav_bytes(tone(2.0, seed=621))).json()["id"])
    assert doc["status"] == "succeeded"
    cut_off = replicas(dead_endpoint(), "b", max_running_jobs=0, **shared)
    r = httpx.get(f"{cut_off.url}/v2/health/ready")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True and body["backends"]["job_store"] and body["backends"]["result_store"]
    assert any(d.startswith("predictors:") for d in body["degraded"]), body
    # Status and downloads keep working on the replica whose predictors are all down.
    assert httpx.get(f"{cut_off.url}/v1/separations/{doc['id']}").json()["status"] == "succeeded"
    assert httpx.get(cut_off.url + doc["zip_url"], follow_redirects=True).status_code == 200

    database = shared["database_url"].rsplit("/", 1)[1]
    postgres.psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    postgres.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
    try:
        r = httpx.get(f"{cut_off.url}/v2/health/ready", timeout=15)
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["code"] == "not_ready", r.text
        assert r.json()["backends"]["job_store"] is False and "job_store" in r.json()["error"]
        wait_until(lambda: metric("musicsplit_gateway_ready") == 0, 10, "the ready gauge follows")
        assert metric("musicsplit_gateway_backend_up", backend="job_store") == 0
    finally:
        postgres.psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    wait_until(lambda: httpx.get(f"{cut_off.url}/v2/health/ready", timeout=15).status_code == 200, 20,
               "ready again once the database is back")


def test_the_queue_bound_counts_every_replicas_queued_jobs(replicas, shared):
    a = replicas(dead_endpoint(), "a", max_running_jobs=0, max_queued_jobs=2, **shared)
    b = replicas(dead_endpoint(), "b", max_running_jobs=0, max_queued_jobs=2, **shared)
    assert submit(a.url, wav_bytes(tone(1.0, seed=631))).status_code == 202
    assert submit(b.url, wav_bytes(tone(1.0, seed=632))).status_code == 202
    full = submit(a.url, wav_bytes(tone(1.0, seed=633)))
    assert full.status_code == 429 and full.json()["code"] == "saturated" and full.headers["retry-after"]
    wait_until(lambda: metric("musicsplit_gateway_queue_depth") == 2, 10, "queue depth is the shared count")

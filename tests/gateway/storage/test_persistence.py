"""Jobs survive a gateway killed mid-job; results are deleted after the retention time
and the job says so (a job never silently disappears)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from musicsplit.localstack import Process, wait_for

from tests.gateway.conftest import free_port, submit, tone, wait_job, wav_bytes


def start_gateway(data_dir, predictor_url, log_path) -> Process:
    port = free_port()
    env = {**os.environ, "MUSICSPLIT_GATEWAY_CHUNK_SECONDS": "3", "MUSICSPLIT_GATEWAY_CHUNK_OVERLAP_SECONDS": "0.5",
           "MUSICSPLIT_GATEWAY_CHUNK_CONCURRENCY": "1", "MUSICSPLIT_GATEWAY_DEFAULT_MODEL": "dsp-baseline",
           "MUSICSPLIT_GATEWAY_METRICS_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "musicsplit.cli", "serve", "gateway", "--host", "127.0.0.1", "--port", str(port),
           "--data_dir", str(data_dir), "--endpoint", f"dsp-baseline={predictor_url}@eu"]
    log = open(log_path, "ab")
    proc = Process(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True),
                   f"http://127.0.0.1:{port}", log_path)
    wait_for(proc.url + "/v2/health/live", proc, 60)
    return proc


@pytest.mark.slow
def test_job_survives_a_gateway_killed_mid_job(baseline_url, tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "gateway.log"
    gw = start_gateway(data_dir, baseline_url, log)
    try:
        job = submit(gw.url, wav_bytes(tone(45.0, channels=1, seed=71), subtype="PCM_16"), user="kim").json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{gw.url}/v1/separations/{job['id']}").json()["progress"]["chunks_done"] < 2:
            assert time.monotonic() < deadline, gw.log()[-2000:]
            time.sleep(0.02)
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
    finally:
        gw.stop()
    gw = start_gateway(data_dir, baseline_url, log)
    try:
        doc = wait_job(gw.url, job["id"], timeout=90)
        assert doc["status"] == "succeeded", doc
        assert doc["progress"]["chunks_done"] == doc["progress"]["chunks_total"] == 18
        assert httpx.get(gw.url + doc["zip_url"]).status_code == 200
        assert "resuming 1 job(s) left running" in gw.log()
    finally:
        gw.stop()
    # The chunks finished before the kill were reloaded, not separated again.
    stored = asyncio.run(_stored_job(data_dir, job["id"]))
    assert 2 <= stored.result["chunks_resumed"] < 18, stored.result
    assert not (data_dir / "jobs" / job["id"] / "chunks").exists(), "checkpoints deleted once the job is done"


async def _stored_job(data_dir, job_id):
    from musicsplit.gateway.storage.database import database_url
    from musicsplit.gateway.storage.jobstore import SqlJobStore

    store = await SqlJobStore.open(database_url(f"sqlite:///{data_dir / 'jobs.sqlite3'}"))
    try:
        return await store.get(job_id, tenant=None)
    finally:
        await store.close()


def test_results_expire_and_the_job_says_so(baseline_url, gateway_factory):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], results_ttl_s=0.5, sweep_interval_s=0.2)
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0))).json()["id"])
    assert doc["status"] == "succeeded" and doc["expires_at"] <= time.time() + 0.5
    expired = wait_job(gw.url, doc["id"], timeout=10, until=("expired",))
    assert expired["stems"] == {}
    r = httpx.get(f"{gw.url}/v1/separations/{doc['id']}/stems.zip")
    assert r.status_code == 404 and "retention" in r.json()["error"]
    assert not gw.service.results.job_dir(doc["id"]).exists()



def test_a_job_run_again_never_writes_into_stem_files_it_shares(baseline_url, tmp_path):
    """Stem files are hard links shared by jobs and the cache (cache hits, deduplicated jobs). A job
    that runs again after a restart, its stems dir still holding such a link (it was answered from
    the cache when the gateway died), must leave the other job's and the cache's files alone."""
    import asyncio
    import hashlib
    import os

    from musicsplit.gateway.jobs.intake import take
    from musicsplit.gateway.storage.jobstore import open_job_store
    from musicsplit.gateway.storage.results_local import LocalResultStore

    from tests.gateway.conftest import GatewayThread, make_settings

    settings = make_settings(tmp_path / "data", [("dsp-baseline", baseline_url, "eu")])
    with GatewayThread(settings) as gw:
        first = wait_job(gw.url, submit(gw.url, wav_bytes(tone(3.0, seed=401))).json()["id"])
        assert first["status"] == "succeeded"
    shared = LocalResultStore(settings.data_dir, settings.staging_dir).job_dir(first["id"]) / "stems" / "vocals.wav"
    links = shared.stat().st_nlink
    assert links >= 2, "the result cache holds a link to the stem"
    before = hashlib.sha256(shared.read_bytes()).hexdigest()

    async def plant() -> str:
        store, results = await open_job_store(settings), LocalResultStore(settings.data_dir, settings.staging_dir)
        try:
            job = await store.create(tenant="public", model="dsp-baseline", params={"stems": None,
                                     "output_format": "wav", "shifts": None}, user_id=None, arm="control",
                                     filename="b.wav", audio_sha=None)
            staged, upload = results.staging_path(), results.staging_path()
            upload.write_bytes(wav_bytes(tone(3.0, seed=402)))
            take(upload, hashlib.sha256(upload.read_bytes()).hexdigest(), staged, settings.limits())
            await results.put_input(job, staged)
            (results.job_dir(job.id) / "stems").mkdir()
            os.link(shared, results.job_dir(job.id) / "stems" / "vocals.wav")
            await store.update(job.id, status="running")
            return job.id
        finally:
            await store.close()

    second_id = asyncio.run(plant())
    with GatewayThread(settings) as gw:
        second = wait_job(gw.url, second_id)
        assert second["status"] == "succeeded", second
        theirs = httpx.get(gw.url + second["stems"]["vocals"]).content
    assert hashlib.sha256(shared.read_bytes()).hexdigest() == before, "the first job's stem was overwritten"
    assert shared.stat().st_nlink == links
    assert hashlib.sha256(theirs).hexdigest() != before

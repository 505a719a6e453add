"""Jobs survive a gateway killed mid-job; results are deleted after the retention time
and the job says so (a job never silently disappears)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from musicsplit.localstack import Process, wait_for

from .conftest import free_port, submit, tone, wait_job, wav_bytes


def start_gateway(data_dir, predictor_url, log_path) -> Process:
    port = free_port()
    env = {**os.environ, "MUSICSPLIT_GATEWAY_CHUNK_SECONDS": "3", "MUSICSPLIT_GATEWAY_CHUNK_OVERLAP_SECONDS": "0.5",
           "MUSICSPLIT_GATEWAY_CHUNK_CONCURRENCY": "1", "MUSICSPLIT_GATEWAY_DEFAULT_MODEL": "dsp-baseline",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "musicsplit.cli", "serve", "gateway", "--host", "127.0.0.1", "--port", str(port),
           "--data_dir", str(data_dir), "--endpoint", f"dsp-baseline={predictor_url}@eu"]
    log = open(log_path, "ab")
    proc = Process(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True),
                   f"http://127.0.0.1:{port}", log_path)
    wait_for(proc.url + "/v2/health/live", proc, 60)
    return proc


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
        assert "re-queued job" in gw.log()
    finally:
        gw.stop()


def test_results_expire_and_the_job_says_so(baseline_url, gateway_factory):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], results_ttl_s=0.5, sweep_interval_s=0.2)
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0))).json()["id"])
    assert doc["status"] == "succeeded" and doc["expires_at"] <= time.time() + 0.5
    expired = wait_job(gw.url, doc["id"], timeout=10, until=("expired",))
    assert expired["stems"] == {}
    r = httpx.get(f"{gw.url}/v1/separations/{doc['id']}/stems.zip")
    assert r.status_code == 404 and "retention" in r.json()["error"]
    assert not gw.service.results.job_dir(doc["id"]).exists()


"""The job runner against a real gateway and predictor: a job whose terminal write fails is
finished or taken over, never left `running` while its replica is busy with other jobs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest
import sqlalchemy as sa

from musicsplit.localstack import wait_until

from tests.gateway.conftest import submit, tone, wait_job, wav_bytes


def test_a_failed_terminal_write_is_retried_or_the_job_taken_over_within_a_lease(baseline_url, black_hole,
                                                                                 gateway_factory):
    lease = 3.0
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu"), ("hung", black_hole, "eu")], max_running_jobs=2,
                         lease_seconds=lease, request_timeout_s=60, health_interval_s=60, queue_poll_s=0.2)
    # Another job keeps the replica busy (and renewing leases) all along.
    busy = submit(gw.url, wav_bytes(tone(1.0, seed=1)), model="hung").json()
    store = gw.service.store
    real_transition = store.transition
    failures = []

    async def failing_transition(job_id, from_status, **fields):
        # The database refuses this job's terminal writes for longer than the runner's tries.
        if fields.get("status") in ("succeeded", "failed") and len(failures) < 4:
            failures.append(job_id)
            raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        return await real_transition(job_id, from_status, **fields)

    store.transition = failing_transition
    t0 = time.monotonic()
    job = submit(gw.url, wav_bytes(tone(1.0)), model="dsp-baseline").json()
    doc = wait_job(gw.url, job["id"], timeout=lease + 10)
    assert doc["status"] == "succeeded", doc
    assert time.monotonic() - t0 < lease + 5, "finished by a second run within about one lease"
    assert len(failures) == 4 and set(failures) == {job["id"]}
    assert gw.job(job["id"]).attempts == 2, "given up after the tries, then claimed again"
    assert httpx.get(f"{gw.url}/v1/separations/{busy['id']}").json()["status"] == "running"
    httpx.delete(f"{gw.url}/v1/separations/{busy['id']}")


def test_carriers_of_a_jobs_trace_are_freed_when_it_ends_anywhere(baseline_url, gateway_factory):
    """A replica that runs no jobs keeps nothing per job it took in once the job is over."""
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], max_running_jobs=0, max_queued_jobs=3)
    carriers = gw.service.runner._trace_carriers
    ids = [submit(gw.url, wav_bytes(tone(0.5, seed=s))).json()["id"] for s in (1, 2)]
    assert set(carriers) == set(ids)
    for job_id in ids:
        assert httpx.delete(f"{gw.url}/v1/separations/{job_id}").json()["status"] == "cancelled"
    assert carriers == {}


def test_a_job_waits_on_an_identical_running_job_only_for_a_while(gateway_factory):
    """Single flight: the second of two identical jobs follows the first, but not forever when the
    first hangs: it sends its own request."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    accepted: list[socket.socket] = []
    infers: list[bytes] = []  # the request line of each inference request (health probes hang too)

    def read(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            line = conn.recv(4096).split(b"\r\n", 1)[0]
            if b"/infer" in line:
                infers.append(line)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(hung.accept()[0])
                threading.Thread(target=read, args=(accepted[-1],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        gw = gateway_factory([("dsp-baseline", f"http://127.0.0.1:{hung.getsockname()[1]}", "eu")],
                             single_flight_wait_s=0.5, request_timeout_s=30, retry_attempts=1, health_interval_s=60)
        audio = wav_bytes(tone(0.5, seed=7))
        first = submit(gw.url, audio).json()["id"]
        wait_until(lambda: infers, 10, "the first job's request")
        second = submit(gw.url, audio).json()["id"]
        wait_until(lambda: len(infers) >= 2, 10, "the follower's own request")
        for job_id in (first, second):
            httpx.delete(f"{gw.url}/v1/separations/{job_id}")
    finally:
        hung.close()
        for conn in accepted:
            conn.close()

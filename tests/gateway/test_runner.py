"""The job runner against a real gateway and predictor: a job whose terminal write fails is
finished or taken over, never left `running` while its replica is busy with other jobs."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from .conftest import submit, tone, wait_job, wav_bytes


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

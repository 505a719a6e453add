"""The job store, the same tests on SQLite and on a real PostgreSQL: tenants see only their
own jobs, idempotency keys hold under concurrency, a cancel wins races, and databases made
by older gateways are migrated in place."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from musicsplit.gateway.storage.database import database_url
from musicsplit.gateway.storage.jobstore import DuplicateIdempotencyKey, SqlJobStore


async def new_job(job_store, tenant="public", user="u1", key=None, batch=None, **kw):
    return await job_store.create(tenant=tenant, model="htdemucs", params={"stems": ["vocals"], "shifts": None},
                              user_id=user, arm="control", filename="a.wav", audio_sha="sha", batch_id=batch,
                              idempotency_key=key, **kw)


async def test_a_job_is_found_only_under_its_tenant(job_store):
    job = await new_job(job_store, tenant="acme")
    assert (await job_store.get(job.id, tenant="acme")).id == job.id
    assert await job_store.get(job.id, tenant="globex") is None
    assert (await job_store.get(job.id, tenant=None)).tenant == "acme"  # the gateway's own reads
    batch = [await new_job(job_store, tenant="acme", batch="b1") for _ in range(3)]
    await new_job(job_store, tenant="globex", batch="b1")
    assert [j.id for j in await job_store.batch("acme", "b1")] == [j.id for j in batch]
    assert [j.tenant for j in await job_store.batch("globex", "b1")] == ["globex"]


async def test_idempotency_keys_are_per_tenant_and_user_anonymous_included(job_store):
    first = await new_job(job_store, tenant="acme", user=None, key="k")
    with pytest.raises(DuplicateIdempotencyKey):
        await new_job(job_store, tenant="acme", user=None, key="k")
    other_tenant = await new_job(job_store, tenant="globex", user=None, key="k")
    other_user = await new_job(job_store, tenant="acme", user="u2", key="k")
    assert len({first.id, other_tenant.id, other_user.id}) == 3
    assert (await job_store.by_idempotency("acme", None, "k")).id == first.id
    assert (await job_store.by_idempotency("globex", None, "k")).id == other_tenant.id
    assert await job_store.by_idempotency("initech", None, "k") is None


async def test_concurrent_creates_with_one_key_make_one_job(job_store):
    results = await asyncio.gather(*(new_job(job_store, key="same") for _ in range(6)), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1 and all(isinstance(r, DuplicateIdempotencyKey) for r in results if r not in made), results


async def test_updates_return_the_row_and_a_transition_loses_to_a_cancel(job_store):
    job = await new_job(job_store)
    running = await job_store.transition(job.id, ("queued",), status="running", started=time.time())
    assert running.status == "running" and running.started
    cancelled = await job_store.transition(job.id, ("queued", "running"), status="cancelled", error_code="cancelled")
    assert cancelled.status == "cancelled"
    assert await job_store.transition(job.id, ("running",), status="succeeded") is None
    updated = await job_store.update(job.id, chunks_done=3, chunks_total=8, result={"warnings": ["a; b"], "q": 0.5})
    assert (updated.chunks_done, updated.result) == (3, {"warnings": ["a; b"], "q": 0.5})
    assert (await job_store.get(job.id, tenant="public")).status == "cancelled"
    assert await job_store.update("no-such-job", chunks_done=1) is None


async def test_unfinished_and_expired(job_store):
    jobs = [await new_job(job_store) for _ in range(3)]
    await job_store.update(jobs[1].id, status="running")
    await job_store.update(jobs[2].id, status="succeeded", finished=time.time() - 100)
    assert {j.id for j in await job_store.unfinished()} == {jobs[0].id, jobs[1].id}
    assert [j.id for j in await job_store.expired(time.time() - 50)] == [jobs[2].id]
    assert await job_store.expired(time.time() - 500) == []


async def test_reseparation_is_the_same_user_of_the_same_tenant(job_store):
    assert await job_store.record_submission("acme", "u1", "sha", "m", 60) is False
    assert await job_store.record_submission("acme", "u1", "sha", "m", 60) is True
    assert await job_store.record_submission("globex", "u1", "sha", "m", 60) is False
    assert await job_store.record_submission("acme", "u2", "sha", "m", 60) is False


async def test_observations_round_trip(job_store):
    await job_store.record_observation("control", "m", "1.0", "success", 0.9, 1.5)
    await job_store.record_observation("new", "m2", None, "failure", None, None)
    rows = sorted(await job_store.observations(), key=lambda r: r["arm"])
    assert [(r["arm"], r["model_version"], r["quality"], r["latency_s"]) for r in rows] == [
        ("control", "1.0", 0.9, 1.5), ("new", None, None, None)]
    assert await job_store.observations(since=time.time() + 10) == []


async def test_replicas_opening_one_new_database_together_all_work(job_store_url):
    stores = await asyncio.gather(*(SqlJobStore.open(job_store_url) for _ in range(3)))
    try:
        job = await new_job(stores[0])
        assert all([(await s.get(job.id, tenant="public")).id == job.id for s in stores])
    finally:
        for s in stores:
            await s.close()


# -- SQLite files made by older gateways -------------------------------------------------------

BEFORE_TENANTS = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, batch_id TEXT, user_id TEXT, status TEXT NOT NULL, model TEXT NOT NULL,
    model_version TEXT, arm TEXT, params TEXT NOT NULL, filename TEXT, audio_sha TEXT, idempotency_key TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, started REAL, finished REAL,
    chunks_done INTEGER NOT NULL DEFAULT 0, chunks_total INTEGER NOT NULL DEFAULT 0, error TEXT,
    error_code TEXT, result TEXT, cached INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX jobs_idempotency_owner ON jobs(COALESCE(user_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_batch ON jobs(batch_id);
CREATE INDEX jobs_status ON jobs(status);
CREATE TABLE submissions (user_id TEXT NOT NULL, audio_sha TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX submissions_key ON submissions(user_id, audio_sha, model);
CREATE TABLE ab_observations (ts REAL NOT NULL, arm TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT,
    outcome TEXT NOT NULL, quality REAL, latency_s REAL);
"""
# Before the COALESCE index, two anonymous jobs could share a key.
BEFORE_IDEMPOTENCY_FIX = BEFORE_TENANTS.replace(
    "CREATE UNIQUE INDEX jobs_idempotency_owner ON jobs(COALESCE(user_id, ''), idempotency_key)",
    "CREATE UNIQUE INDEX jobs_idempotency ON jobs(user_id, idempotency_key)")


def legacy_file(path, schema: str, rows: list[tuple]) -> str:
    db = sqlite3.connect(str(path))
    db.executescript(schema)
    db.executemany("INSERT INTO jobs (id, status, model, params, user_id, idempotency_key, result, created, updated)"
                   " VALUES (?, ?, 'm', '{\"output_format\": \"wav\"}', ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO submissions VALUES ('u', 'sha', 'm', ?)", (time.time(),))
    db.commit()
    db.close()
    return database_url(f"sqlite:///{path}")


async def test_a_database_from_before_tenants_is_migrated_in_place(tmp_path):
    job_store_url = legacy_file(tmp_path / "old.sqlite3", BEFORE_TENANTS, [
        ("j0", "succeeded", "u", "k", '{"stems": ["vocals"]}', 1.0, 1.0),
        ("j1", "running", None, None, None, 2.0, 2.0)])
    job_store = await SqlJobStore.open(job_store_url)
    try:
        old = await job_store.get("j0", tenant="public")
        assert (old.tenant, old.result, old.params, old.cached) == ("public", {"stems": ["vocals"]},
                                                                    {"output_format": "wav"}, False)
        assert (await job_store.get("j1", tenant="public")).result == {}
        assert [j.id for j in await job_store.unfinished()] == ["j1"]
        assert (await job_store.by_idempotency("public", "u", "k")).id == "j0"
        with pytest.raises(DuplicateIdempotencyKey):
            await new_job(job_store, user="u", key="k")
        await new_job(job_store, tenant="acme", user="u", key="k")
        assert await job_store.record_submission("public", "u", "sha", "m", 60) is True
    finally:
        await job_store.close()
    reopened = await SqlJobStore.open(job_store_url)  # already at the newest schema: opens as it is
    try:
        assert (await reopened.get("j0", tenant="public")).id == "j0"
    finally:
        await reopened.close()


async def test_anonymous_duplicates_from_before_the_idempotency_fix_keep_the_first_key(tmp_path):
    job_store_url = legacy_file(tmp_path / "older.sqlite3", BEFORE_IDEMPOTENCY_FIX, [
        ("j0", "succeeded", None, "k", None, 0.0, 0.0), ("j1", "succeeded", None, "k", None, 1.0, 1.0)])
    job_store = await SqlJobStore.open(job_store_url)
    try:
        assert (await job_store.by_idempotency("public", None, "k")).id == "j0"
        assert (await job_store.get("j1", tenant="public")).idempotency_key is None
        with pytest.raises(DuplicateIdempotencyKey):
            await new_job(job_store, user=None, key="k")
        await new_job(job_store, user="u", key="k")
    finally:
        await job_store.close()

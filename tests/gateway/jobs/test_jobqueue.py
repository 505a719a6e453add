"""The shared job queue, the same tests on SQLite and on a real PostgreSQL: owners are served in
turn, replicas claiming at once never get the same job, an expired lease is taken over, and a
replica that lost its lease can change nothing (progress, checkpoints, the terminal state)."""

from __future__ import annotations

import asyncio

import pytest

from musicsplit.gateway.jobs.jobqueue import ChunkPlan, SqlJobQueue
from musicsplit.gateway.storage.jobstore import SqlJobStore


@pytest.fixture
def queue(job_store):
    return SqlJobQueue(job_store.engine)


async def new_job(job_store, tenant="public", user="u1"):
    return await job_store.create(tenant=tenant, model="m", params={}, user_id=user, arm="control", filename=None,
                              audio_sha=None)


async def test_owners_are_served_in_turn_least_recently_served_first(job_store, queue):
    batch = [await new_job(job_store, user="batch-user") for _ in range(4)]
    alice = await new_job(job_store, user="alice")
    bob = await new_job(job_store, tenant="acme", user="alice")  # same user name, another tenant: another owner
    anonymous = await new_job(job_store, user=None)
    order = [(await queue.claim("r1", 30)).job.id for _ in range(7)]
    # acme, never served, goes before public's other users once public has had a turn.
    assert order == [batch[0].id, bob.id, alice.id, anonymous.id, batch[1].id, batch[2].id, batch[3].id]
    assert await queue.claim("r1", 30) is None
    # alice, served long ago, comes before the batch user served just now.
    later = [await new_job(job_store, user="batch-user"), await new_job(job_store, user="alice")]
    assert [(await queue.claim("r1", 30)).job.id for _ in range(2)] == [later[1].id, later[0].id]


async def test_tenants_take_turns_however_many_users_each_has(job_store, queue):
    crowd = [await new_job(job_store, tenant="crowd", user=f"user{i}") for i in range(6)]
    solo = [await new_job(job_store, tenant="solo", user="only") for _ in range(3)]
    claimed = [(await queue.claim("r1", 30)).job for _ in range(9)]
    assert [job.tenant for job in claimed[:6]] == ["crowd", "solo"] * 3, [job.tenant for job in claimed]
    assert sorted(job.id for job in claimed) == sorted(job.id for job in crowd + solo)  # each once
    assert await queue.claim("r1", 30) is None


async def test_a_claim_leases_the_job_and_counts_the_queue(job_store, queue):
    jobs = [await new_job(job_store) for _ in range(3)]
    assert await queue.queued() == 3
    claimed = await queue.claim("replica-a", 30)
    assert claimed.taken_over_from is None
    job = claimed.job
    assert (job.id, job.status, job.lease_owner, job.attempts) == (jobs[0].id, "running", "replica-a", 1)
    assert job.started and job.lease_expires > job.started  # the database clock, in unix seconds
    assert await queue.queued() == 2


async def test_replicas_claiming_at_once_never_get_the_same_job(job_store_url, job_store):
    for _ in range(12):
        await new_job(job_store, user=None)
    stores = [await SqlJobStore.open(job_store_url) for _ in range(3)]
    try:
        queues = [SqlJobQueue(s.engine) for s in stores]

        async def drain(q, name):
            got = []
            while (c := await q.claim(name, 30)) is not None:
                got.append(c.job.id)
            return got

        claims = await asyncio.gather(*(drain(q, f"r{i}") for i, q in enumerate(queues)))
    finally:
        for s in stores:
            await s.close()
    every = [j for c in claims for j in c]
    assert len(every) == len(set(every)) == 12


async def test_an_expired_lease_is_taken_over_first_and_the_old_holder_changes_nothing(job_store, queue):
    await new_job(job_store)
    job = (await queue.claim("dead", 0.2)).job
    waiting = await new_job(job_store, user="other")
    assert await queue.progress(job.id, "dead", 2, 8)
    assert await queue.checkpoint(job.id, "dead", 0, {"model": "m"}, 3, 8)
    assert (await queue.claim("alive", 30)).job.id == waiting.id  # the lease still runs: not taken
    await asyncio.sleep(0.3)
    assert await queue.renew("dead", 30, {job.id}) == {job.id}, "a late renewal by the holder keeps its job"
    await queue.release(job.id, "dead")  # e.g. shutdown: resumable at once
    taken = await queue.claim("alive", 30)
    assert (taken.job.id, taken.taken_over_from, taken.job.lease_owner) == (job.id, "dead", "alive")
    assert taken.job.attempts == 2 and taken.job.chunks_done == 3  # progress kept
    # The old holder lost the lease: nothing it writes lands.
    assert await queue.renew("dead", 30, {job.id}) == set()
    assert await queue.progress(job.id, "dead", 7, 8) is None
    assert await queue.checkpoint(job.id, "dead", 5, {}, 7, 8) is None
    assert not await queue.save_plan(job.id, "dead", ChunkPlan([(0, 10)], None))
    assert await job_store.transition(job.id, ("running",), held_by="dead", status="succeeded") is None
    assert list(await queue.checkpoints(job.id)) == [0]
    # The new holder's progress never goes below what was shown.
    assert (await queue.progress(job.id, "alive", 1, 8)).chunks_done == 3
    assert (await job_store.transition(job.id, ("running",), held_by="alive", status="succeeded")).status == "succeeded"


async def test_plan_and_checkpoints_round_trip_and_are_forgotten(job_store, queue):
    await new_job(job_store)
    job = (await queue.claim("r", 30)).job
    plan = ChunkPlan([(0, 100), (90, 200)], "chunked: too long for one request")
    assert await queue.save_plan(job.id, "r", plan)
    assert await queue.save_plan(job.id, "r", ChunkPlan([(0, 200)], None))  # the first plan stays
    assert await queue.plan(job.id) == plan
    await queue.checkpoint(job.id, "r", 1, {"model": "m", "model_version": "1", "quality_score": 0.9}, 1, 2)
    await queue.checkpoint(job.id, "r", 1, {"model": "m", "model_version": "1", "quality_score": 0.8}, 1, 2)
    assert await queue.checkpoints(job.id) == {1: {"model": "m", "model_version": "1", "quality_score": 0.8}}
    await queue.forget(job.id)
    assert await queue.plan(job.id) is None and await queue.checkpoints(job.id) == {}


async def test_release_all_makes_every_running_job_resumable(job_store, queue):
    await new_job(job_store)
    await new_job(job_store, user="u2")
    a, b = (await queue.claim("old-life", 300)).job, (await queue.claim("old-life", 300)).job
    assert await queue.claim("new-life", 30) is None
    assert await queue.release_all() == 2
    assert {(await queue.claim("new-life", 30)).job.id for _ in range(2)} == {a.id, b.id}


async def test_renewal_keeps_only_the_jobs_the_replica_still_runs(job_store, queue):
    """A row whose task ended without its terminal write is not renewed with the others: its lease
    expires and another replica takes it over."""
    await new_job(job_store)
    await new_job(job_store, user="u2")
    running, zombie = (await queue.claim("r1", 0.3)).job, (await queue.claim("r1", 0.3)).job
    assert await queue.renew("r1", 30, {running.id}) == {running.id}
    await asyncio.sleep(0.4)
    taken = await queue.claim("r2", 30)
    assert (taken.job.id, taken.taken_over_from) == (zombie.id, "r1")
    assert await queue.claim("r2", 30) is None  # the renewed one stays r1's

"""The event bus: in-process, and Redis pub/sub (a real redis-server) between two replicas'
buses; Redis down means local subscribers still get updates, `up` says so, publishing never
waits or fails, and the bus reconnects by itself when Redis is back."""

from __future__ import annotations

import asyncio
import json
import time

from musicsplit.gateway.jobs.events import InProcessEventBus, RedisEventBus
from musicsplit.gateway.storage.jobstore import SeparationJob


def job(job_id="j1", done=0, status="running") -> SeparationJob:
    return SeparationJob(id=job_id, status=status, model="m", params={"stems": None}, tenant="acme",
                         chunks_done=done, chunks_total=8, result={"warnings": []})


async def until(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


async def test_in_process_bus_keeps_only_the_newest_update():
    bus = InProcessEventBus()
    async with bus.subscribe("j1") as sub:
        for done in range(3):
            await bus.publish(job(done=done))
        await bus.publish(job("other", done=7))
        assert (await sub.next(1.0)).chunks_done == 2
        assert await sub.next(0.05) is None
    assert bus.channels() == set()


async def test_redis_bus_carries_a_job_to_another_replica(redis_server):
    a, b = RedisEventBus(redis_server.url, "replica-a"), RedisEventBus(redis_server.url, "replica-b")
    await a.start()
    await b.start()
    try:
        await until(lambda: a.up and b.up, what="both buses connected")
        async with b.subscribe("j1") as on_b, a.subscribe("j1") as on_a:
            sent = job(done=5, status="succeeded")
            sent.result = {"stems": ["vocals"], "quality_score": 0.9}
            # The subscription reaches Redis asynchronously: publish until it lands (what a job does
            # anyway, once per chunk); the newest state is what arrives.
            got = None
            for _ in range(50):
                await a.publish(sent)
                if (got := await on_b.next(0.1)) is not None:
                    break
            assert got == sent, "the whole job, as SeparationJob, on the other replica"
            assert (await on_a.next(0.1)) == sent, "the publishing replica's own subscriber"
            assert await on_a.next(0.3) is None, "delivered once, not again through Redis"
    finally:
        await a.close()
        await b.close()


async def test_redis_down_local_updates_go_on_and_the_bus_reconnects(redis_server):
    a = RedisEventBus(redis_server.url, "replica-a", retry_s=0.2)
    b = RedisEventBus(redis_server.url, "replica-b", retry_s=0.2)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.up and b.up, what="both buses connected")
        async with a.subscribe("j1") as local, b.subscribe("j1") as remote:
            redis_server.stop()
            await a.publish(job(done=1))  # finds Redis gone
            await until(lambda: not a.up and not b.up, what="both buses say Redis is down")
            started = time.monotonic()
            for done in range(2, 5):
                await a.publish(job(done=done))
            assert time.monotonic() - started < 0.5, "publishing does not wait on a dead Redis"
            assert (await local.next(1.0)).chunks_done == 4
            redis_server.restart()
            await until(lambda: a.up and b.up, timeout=15, what="both buses reconnected")
            got = None
            for done in range(5, 60):
                await a.publish(job(done=done))
                if (got := await remote.next(0.1)) is not None:
                    break
            assert got is not None and got.chunks_done >= 5, "the other replica's subscription came back"
    finally:
        await a.close()
        await b.close()


async def test_a_garbled_message_is_skipped(redis_server):
    import redis

    bus = RedisEventBus(redis_server.url, "replica-b")
    await bus.start()
    try:
        await until(lambda: bus.up, what="bus connected")
        raw = redis.Redis.from_url(redis_server.url)
        channel = RedisEventBus.CHANNEL + "j1"
        async with bus.subscribe("j1") as sub:
            got = None
            for _ in range(50):
                raw.publish(channel, b"{not json")
                raw.publish(channel, json.dumps({"origin": "x", "job": {"id": "j1"}}))  # fields missing
                raw.publish(channel, json.dumps({"origin": "x", "job": job(done=3).to_dict()}))
                if (got := await sub.next(0.1)) is not None:
                    break
            assert got.chunks_done == 3 and bus.up
    finally:
        await bus.close()

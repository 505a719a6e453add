"""Job updates for progress subscribers: the event bus.

The runner publishes a job every time its row changes; a WebSocket
subscribes to one job and sends what it receives. A subscription keeps
only the newest update: a job's state supersedes the ones before it, so a
slow reader skips intermediate progress but never misses the last state,
and holds no backlog.

`InProcessEventBus` serves one gateway process. `RedisEventBus` carries
`SeparationJob.to_dict()` as JSON over Redis pub/sub (a channel per job), so
a WebSocket on replica B follows a job running on replica A. Redis down:
subscribers of the replica running the job still get its updates, the
others fall back to polling the job store (the WebSocket route does when
`up` is False), and jobs run on; the bus reconnects by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import AsyncIterator, Protocol

from musicsplit.gateway.storage.jobstore import SeparationJob

log = logging.getLogger(__name__)


class Subscription:
    """The newest update of one job not yet taken."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self._latest: SeparationJob | None = None
        self._changed = asyncio.Event()

    def offer(self, job: SeparationJob) -> None:
        self._latest = job
        self._changed.set()

    async def next(self, timeout: float) -> SeparationJob | None:
        """The next update, or None if none came within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        self._changed.clear()
        job, self._latest = self._latest, None
        return job


class EventBus(Protocol):
    backend: str
    up: bool  # False: updates from other replicas do not arrive (subscribers should poll)

    async def start(self) -> None: ...

    async def publish(self, job: SeparationJob) -> None: ...

    def subscribe(self, job_id: str) -> AbstractAsyncContextManager[Subscription]: ...

    async def close(self) -> None: ...


class InProcessEventBus:
    backend = "inprocess"
    up = True

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = {}

    async def start(self) -> None:
        return None

    def channels(self) -> set[str]:
        """Jobs with a subscriber here."""
        return set(self._subscriptions)

    async def publish(self, job: SeparationJob) -> None:
        self.deliver(job)

    def deliver(self, job: SeparationJob) -> None:
        for sub in list(self._subscriptions.get(job.id, ())):
            sub.offer(job)

    @asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        sub = Subscription(job_id)
        self._subscriptions.setdefault(job_id, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subscriptions.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscriptions[job_id]

    async def close(self) -> None:
        self._subscriptions.clear()


class RedisEventBus:
    """Redis pub/sub, one channel per job; one connection per replica carries every subscription."""

    backend = "redis"
    CHANNEL = "musicsplit:job:"
    IDLE = "musicsplit:events"  # always subscribed, so the connection waits for messages even with no job's

    def __init__(self, url: str, origin: str, *, retry_s: float = 1.0):
        import redis.asyncio as redis

        self.client = redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        self.origin = origin  # this replica: its own messages come back from Redis and are skipped
        self.retry_s = retry_s
        self.local = InProcessEventBus()
        self.up = False
        self._pubsub = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="redis-events")

    async def publish(self, job: SeparationJob) -> None:
        from redis.exceptions import RedisError

        await self.local.publish(job)  # this replica's subscribers at once, Redis or not
        if not self.up:
            return  # the reader reconnects; meanwhile other replicas poll, no job waits on a timeout
        try:
            await self.client.publish(self.CHANNEL + job.id,
                                      json.dumps({"origin": self.origin, "job": job.to_dict()}))
        except (RedisError, OSError) as exc:
            self._down(exc)

    @asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        async with self.local.subscribe(job_id) as sub:
            await self._sync_channels()
            try:
                yield sub
            finally:
                await self._sync_channels()

    async def _sync_channels(self) -> None:
        """Subscribe the connection to exactly the jobs with a subscriber here."""
        from redis.exceptions import RedisError

        pubsub = self._pubsub
        if pubsub is None or not self.up:
            return  # the reader subscribes to them when it (re)connects
        wanted = {self.CHANNEL + j for j in self.local.channels()}
        have = {c.decode() if isinstance(c, bytes) else c for c in pubsub.channels} - {self.IDLE}
        try:
            if wanted - have:
                await pubsub.subscribe(*(wanted - have))
            if have - wanted:
                await pubsub.unsubscribe(*(have - wanted))
        except (RedisError, OSError) as exc:
            self._down(exc)

    async def _read(self) -> None:
        from redis.exceptions import RedisError

        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.IDLE, *(self.CHANNEL + j for j in self.local.channels()))
                self._pubsub = pubsub
                if not self.up:
                    log.info("redis events connected")
                self.up = True
                await self._sync_channels()  # subscribers that came while connecting
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._down(exc)
            finally:
                self._pubsub = None
                try:
                    await pubsub.aclose()
                except Exception:  # a connection already gone
                    pass
            await asyncio.sleep(self.retry_s)

    def _deliver(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") == self.origin:
                return  # delivered locally when published
            job = SeparationJob.from_dict(message["job"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("redis events: unreadable message skipped (%s)", exc)
            return
        self.local.deliver(job)

    def _down(self, exc: BaseException) -> None:
        if self.up:
            log.warning("redis events unavailable (%s): progress from other replicas falls back to polling", exc)
        self.up = False

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.local.close()
        try:
            await self.client.aclose()
        except Exception:  # pragma: no cover - shutdown best effort
            pass


def make_event_bus(settings, origin: str) -> InProcessEventBus | RedisEventBus:
    """The bus `events_backend` names; `origin` is this replica's id."""
    if settings.events_backend == "redis":
        return RedisEventBus(settings.redis_url.get_secret_value(), origin)
    return InProcessEventBus()

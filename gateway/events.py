"""Job updates for progress subscribers: the event bus.

The runner publishes a job every time its row changes; a WebSocket
subscribes to one job and sends what it receives. A subscription keeps
only the newest update: a job's state supersedes the ones before it, so a
slow reader skips intermediate progress but never misses the last state,
and holds no backlog. `InProcessEventBus` serves one gateway process; a
shared bus (Redis pub/sub) fits the same interface, carrying
`SeparationJob.to_dict()` as JSON.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import AsyncIterator, Protocol

from musicsplit.gateway.jobstore import SeparationJob


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
    async def publish(self, job: SeparationJob) -> None: ...

    def subscribe(self, job_id: str) -> AbstractAsyncContextManager[Subscription]: ...

    async def close(self) -> None: ...


class InProcessEventBus:
    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = {}

    async def publish(self, job: SeparationJob) -> None:
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


def make_event_bus(settings) -> InProcessEventBus:
    return InProcessEventBus()

"""Bounded in-flight inference: a few run, a few wait, the rest are told to retry.

An unbounded queue turns a burst into minutes of latency for everyone and
an OOM for the pod; refusing early with Retry-After lets the gateway (or
KServe's autoscaler) move the work elsewhere.
"""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import asynccontextmanager

from musicsplit.errors import Saturated

# Set by the HTTP middleware once it has admitted a request, so the model
# (which also serves gRPC, where no middleware runs) does not admit it twice.
admitted: contextvars.ContextVar[bool] = contextvars.ContextVar("musicsplit_admitted", default=False)


class Admission:
    def __init__(self, max_inflight: int, max_queue: int):
        if max_inflight < 1 or max_queue < 0:
            raise ValueError("max_inflight must be >= 1 and max_queue >= 0")
        self.max_inflight = max_inflight
        self.capacity = max_inflight + max_queue
        self.running = asyncio.Semaphore(max_inflight)
        self.count = 0
        self.mean_seconds = 5.0  # updated from finished inferences

    def retry_after(self) -> float:
        waves = self.count / self.max_inflight
        return min(120.0, max(1.0, waves * self.mean_seconds))

    def observe(self, seconds: float) -> None:
        self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * seconds

    @asynccontextmanager
    async def ticket(self):
        """Hold a place (running or queued) for the whole request, or raise Saturated."""
        if self.count >= self.capacity:
            raise Saturated(
                f"all {self.capacity} inference places are taken "
                f"({self.max_inflight} running, {self.capacity - self.max_inflight} queued); retry later",
                retry_after=self.retry_after(),
            )
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1

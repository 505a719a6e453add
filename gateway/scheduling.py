"""A bounded, fair job queue: round-robin across owners (users).

One user's batch of fifty files does not hold everyone else back: workers
take one job from each owner in turn. The bound is global; beyond it the
gateway answers 429 with Retry-After instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class QueueFull(Exception):
    pass


class FairQueue:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._owners: OrderedDict[str, deque] = OrderedDict()
        self._size = 0
        self._ready = asyncio.Condition()

    def __len__(self) -> int:
        return self._size

    def room(self) -> int:
        return max(0, self.maxsize - self._size)

    def put_nowait(self, owner: str, item, *, force: bool = False) -> None:
        """Queue an item; QueueFull beyond the bound (force: re-queued work at start-up)."""
        if not force and self._size >= self.maxsize:
            raise QueueFull(f"{self._size} jobs are waiting (limit {self.maxsize})")
        self._owners.setdefault(owner, deque()).append(item)
        self._size += 1

    async def notify(self) -> None:
        async with self._ready:
            self._ready.notify_all()

    async def get(self):
        async with self._ready:
            await self._ready.wait_for(lambda: self._size > 0)
            owner, items = next(iter(self._owners.items()))
            item = items.popleft()
            self._size -= 1
            # The owner goes to the back of the line, or leaves it when done.
            del self._owners[owner]
            if items:
                self._owners[owner] = items
            return item

    def remove(self, predicate) -> int:
        """Drop queued items matching predicate (a cancelled job); returns how many."""
        removed = 0
        for owner in list(self._owners):
            items = self._owners[owner]
            keep = deque(i for i in items if not predicate(i))
            removed += len(items) - len(keep)
            if keep:
                self._owners[owner] = keep
            else:
                del self._owners[owner]
        self._size -= removed
        return removed

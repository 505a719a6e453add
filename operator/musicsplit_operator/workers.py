"""The one shape of the operator's background work (golden-set probes,
webhook calls, registry write-back): a bounded thread pool where at most one
job per key runs at a time; a job submitted while its key's last one runs is
refused (the next tick asks again). The reconcile ticks never wait for one."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable

log = logging.getLogger(__name__)


class KeyedPool:
    """`workers` threads; `lock` guards the running keys, and whatever else a
    worker remembers between jobs (it may take it for its own state)."""

    def __init__(self, workers: int, name: str):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.lock = threading.Lock()
        self._running: set[Hashable] = set()

    def running(self, key: Hashable) -> bool:
        """Call with `lock` held."""
        return key in self._running

    def submit(self, key: Hashable | None, fn: Callable, *args, admitted: bool = False) -> bool:
        """Run fn(*args) unless a job of `key` runs (None: no key, never refused);
        `admitted`: the caller already claimed `key` under `lock` (claim())."""
        if key is not None and not admitted:
            with self.lock:
                if key in self._running:
                    return False
                self._running.add(key)
        try:
            self._pool.submit(self._run, key, fn, args)
        except RuntimeError:  # shut down
            self.release(key)
            return False
        return True

    def claim(self, key: Hashable) -> bool:
        """Claim `key` (call with `lock` held); then submit(..., admitted=True)."""
        if key in self._running:
            return False
        self._running.add(key)
        return True

    def release(self, key: Hashable | None) -> None:
        if key is not None:
            with self.lock:
                self._running.discard(key)

    def _run(self, key, fn, args) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a bug must not kill the worker thread silently
            log.exception("background job %s failed", key)
        finally:
            self.release(key)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

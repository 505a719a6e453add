"""Webhook calls, off the reconcile path.

A tick asks `policy.due_calls` / `policy.notifications` what to call and
submits them to a `WebhookWorker`, a bounded thread pool shared by all
SeparationModels; it never waits for a hook. The worker POSTs the JSON
payload, keeps the status code and nothing else of the answer, and writes
the call's record to `status.webhooks[name]`, where the next tick reads it.

Care taken with URLs a SeparationModel's author chose (egress.py, as with
spec.analysis.prometheusUrl): only URLs under the operator's allowlist when it
has one, else only public addresses; no redirects followed; the response body is never read, so nothing a
receiver answers reaches status, Events or logs; every call bounded by the
hook's timeout (at most 5 minutes, spec.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable
import httpx

from . import egress, metrics
from .egress import EgressPolicy, Resolver
from .policy import ERROR, NOT_ALLOWED, OK, REJECTED, TIMEOUT, HookCall, HookJob, record
from .workers import KeyedPool

log = logging.getLogger(__name__)

NOTIFICATIONS_QUEUED_MAX = 100  # per SeparationModel; event hooks past it are dropped (and counted)

# Writes {"webhooks": {hook name: record}} into the SeparationModel (namespace, name)'s status.
StatusWriter = Callable[[str, str, dict], None]


def policy(allowlist: list[str] = (), allowed_networks: list[str] = ()) -> EgressPolicy:
    """Webhooks' rule (egress.py): the allowlist, or any public http(s) URL without one."""
    return EgressPolicy(tuple(allowlist), open_by_default=True, allowed_networks=tuple(allowed_networks),
                        setting="the operator's webhook allowlist (MUSICSPLIT_OPERATOR_WEBHOOK_URL_ALLOWLIST)")


def call(c: HookCall, rule: EgressPolicy, client: httpx.Client | None = None,
         resolve: Resolver = egress.resolve) -> dict:
    """POST the payload; the call's record for status (never raises)."""
    started = datetime.now(timezone.utc)
    hook, code = c.hook, None
    why = rule.refusal(hook.url, resolve)
    if why:
        outcome, reason = NOT_ALLOWED, f"URL refused ({why}): not called"
    else:
        try:
            http = client or httpx.Client()
            try:
                # Streamed and closed unread: only the status code is wanted.
                with http.stream("POST", hook.url, json=c.payload, timeout=hook.timeout_s,
                                 follow_redirects=False) as r:
                    code = r.status_code
            finally:
                if client is None:
                    http.close()
            outcome = OK if 200 <= code < 300 else REJECTED
            reason = f"HTTP {code}"
        except httpx.TimeoutException:
            outcome, reason = TIMEOUT, f"no answer within {hook.timeout}"
        except httpx.HTTPError as e:  # refused, no such host, TLS: name the failure, not what came back
            outcome, reason = ERROR, f"no answer: {type(e).__name__}"
    return record(hook, c.key, outcome, reason, started, datetime.now(timezone.utc), code)


@dataclass
class _Last:
    key: str | None
    finished: float  # time.monotonic()


class WebhookWorker:
    """At most `workers` calls at a time over all SeparationModels, at most one
    per hook: a call submitted while the same hook's last one runs is dropped
    (the next tick asks again), and so is a repeat of an answered key within
    its `repeat_after_s` (a tick that read status just before the answer
    landed)."""

    def __init__(self, write: StatusWriter, *, workers: int = 4, rule: EgressPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._write, self._rule = write, rule or policy()
        self._clock = clock
        self._pool = KeyedPool(workers, "webhook")
        self._lock = self._pool.lock
        self._http = httpx.Client(follow_redirects=False, limits=httpx.Limits(max_connections=workers))
        self._last: dict[tuple[str, str, str], _Last] = {}
        self._notifications: dict[tuple[str, str], int] = {}

    def submit(self, job: HookJob) -> int:
        """Queue the job's calls; how many were queued."""
        queued = 0
        for c in job.calls:
            if self._admit(job, c):
                key = None if c.key is None else (job.namespace, job.name, c.hook.name)
                if self._pool.submit(key, self._run, job, c, admitted=True):
                    queued += 1
                elif c.key is None:
                    self._notified(job)
        return queued

    def _admit(self, job: HookJob, c: HookCall) -> bool:
        hook_key = (job.namespace, job.name, c.hook.name)
        with self._lock:
            if c.key is None:
                n = self._notifications.get((job.namespace, job.name), 0)
                if n >= NOTIFICATIONS_QUEUED_MAX:
                    metrics.webhook_called(job.namespace, job.name, c.hook.type, "dropped")
                    log.warning("%s/%s: %d notifications queued already; %s webhook %s dropped", job.namespace,
                                job.name, n, c.hook.type, c.hook.name)
                    return False
                self._notifications[(job.namespace, job.name)] = n + 1
                return True
            last = self._last.get(hook_key)
            recent = last is not None and last.key == c.key and (
                c.repeat_after_s is None or self._clock() - last.finished < c.repeat_after_s)
            return not recent and self._pool.claim(hook_key)

    def _notified(self, job: HookJob) -> None:
        """One queued notification less for the object."""
        with self._lock:
            obj = (job.namespace, job.name)
            self._notifications[obj] = max(self._notifications.get(obj, 1) - 1, 0)

    def _run(self, job: HookJob, c: HookCall) -> None:
        try:
            rec = call(c, self._rule, self._http)
            metrics.webhook_called(job.namespace, job.name, c.hook.type, rec["outcome"])
            log.info("%s/%s %s webhook %s: %s", job.namespace, job.name, c.hook.type, c.hook.name, rec["reason"])
            try:
                self._write(job.namespace, job.name, {"webhooks": {c.hook.name: rec}})
            except Exception as e:  # noqa: BLE001 - the answer is lost; the next tick asks again
                log.warning("%s/%s webhook %s: result not written: %s", job.namespace, job.name, c.hook.name, e)
                return
            if c.key is not None:
                with self._lock:
                    self._last[(job.namespace, job.name, c.hook.name)] = _Last(c.key, self._clock())
        finally:
            if c.key is None:
                self._notified(job)

    def forget(self, namespace: str, name: str) -> None:
        """A deleted SeparationModel's memory goes (bounded by the live objects)."""
        with self._lock:
            for k in [k for k in self._last if k[:2] == (namespace, name)]:
                del self._last[k]
            self._notifications.pop((namespace, name), None)

    def shutdown(self) -> None:
        self._pool.shutdown()
        # Calls still running end with an error they record themselves; the
        # client goes with the process.

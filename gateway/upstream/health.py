"""Readiness: can this replica take work?

Ready means its job store (the shared queue) and result store answer: it can
accept uploads, run jobs, serve status and downloads. Everything else only
degrades it, and says so in /v2/health/ready's body and in
`musicsplit_gateway_backend_up`: predictors down (jobs fail after their
retries, as they would on any replica; uploads, status and downloads keep
working), Redis events down (progress from other replicas arrives by
polling), the result cache down (uncached), Unleash down (flags from the
last known state). A replica that is not ready is taken out of the Service
by Kubernetes; a predictor outage must not take out every gateway replica
with it.

`musicsplit_gateway_ready`, `backend_up{backend}` and `queue_depth` are
refreshed every `health_interval_s` whether or not anything probes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx

from musicsplit.gateway import metrics

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 3.0
REQUIRED = ("job_store", "result_store")


@dataclass
class Report:
    ready: bool
    backends: dict[str, bool]
    degraded: list[str] = field(default_factory=list)
    endpoints: list[dict] = field(default_factory=list)

    def body(self) -> dict:
        return {"ready": self.ready, "degraded": self.degraded, "backends": self.backends,
                "endpoints": self.endpoints}


async def _reaches(check, timeout: float = CHECK_TIMEOUT_S) -> tuple[bool, str]:
    try:
        await asyncio.wait_for(check(), timeout)
        return True, ""
    except asyncio.TimeoutError:
        return False, f"no answer within {timeout:.0f} s"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"


class Health:
    def __init__(self, service):
        self.service = service
        self._task: asyncio.Task | None = None
        self._unleash: tuple[float, bool, str] | None = None  # (checked at, up, why not)

    async def check(self) -> Report:
        svc = self.service
        checks = {"job_store": svc.store.ping, "result_store": svc.results.check}
        if svc.cache.backend == "redis":
            checks["cache"] = svc.cache.check
        names = list(checks)
        results = await asyncio.gather(*(_reaches(checks[n]) for n in names))
        backends, why = {}, {}
        for name, (up, reason) in zip(names, results):
            backends[name] = up
            if not up:
                why[name] = reason
        if svc.cache.backend == "disk":
            backends["cache"] = True
        backends["events"] = svc.events.up
        if svc.settings.unleash_url:
            backends["unleash"], reason = await self._unleash_up()
            if reason:
                why["unleash"] = reason
        ready = all(backends[b] for b in REQUIRED)
        degraded = [f"{b}: {why[b]}" for b in REQUIRED if not backends[b]]
        if not backends.get("cache", True):
            degraded.append(f"cache: {why.get('cache')}: results are not cached")
        if not backends["events"]:
            degraded.append("events: Redis unreachable: progress of jobs running on other replicas arrives by "
                            "polling")
        if not backends.get("unleash", True):
            degraded.append(f"unleash: {why.get('unleash')}: flags from the last known state")
        pool = svc.pool
        if not any(s.healthy for s in pool.states):
            degraded.append("predictors: no predictor endpoint is healthy: jobs fail upstream_unavailable after "
                            "their retries; uploads, status and downloads keep working")
        for name, up in backends.items():
            metrics.BACKEND_UP.labels(backend=name).set(1 if up else 0)
        metrics.READY.set(1 if ready else 0)
        endpoints = [{"model": s.model, "region": s.region, "healthy": s.healthy, "breaker": s.breaker.state}
                     for s in pool.states]
        return Report(ready, backends, degraded, endpoints)

    async def _unleash_up(self) -> tuple[bool, str]:
        """Unleash's client API answers with this gateway's token (checked at the flags' refresh pace)."""
        settings = self.service.settings
        if self._unleash and time.monotonic() - self._unleash[0] < settings.unleash_refresh_s:
            return self._unleash[1], self._unleash[2]
        token = settings.unleash_api_token.get_secret_value() if settings.unleash_api_token else None

        async def fetch() -> None:
            async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S) as client:
                r = await client.get(settings.unleash_url.rstrip("/") + "/client/features",
                                     headers={"Authorization": token} if token else {})
                r.raise_for_status()

        up, reason = await _reaches(fetch)
        self._unleash = (time.monotonic(), up, reason)
        return up, reason

    async def refresh(self) -> None:
        report = await self.check()
        try:
            metrics.QUEUE.set(await self.service.queue.queued())
        except Exception:  # the job store is down: readiness says so
            pass
        if not report.ready:
            log.warning("not ready: %s", "; ".join(report.degraded))

    def start(self, interval: float) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.refresh()
                except Exception:  # pragma: no cover - a check that raised past _reaches
                    log.exception("health check failed")
                await asyncio.sleep(interval)

        self._task = asyncio.create_task(loop(), name="health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

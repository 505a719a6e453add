"""Per-tenant quotas, counted in the job store's database so that every replica sees the same numbers.

- `concurrent_jobs`: jobs queued or running; counted with the job's own insert
  (`JobStore.create(max_active=...)`), so two replicas never both take the last place.
- `requests_per_minute`: authenticated API requests in the current minute (a
  fixed window; a refused request does not count).
- `audio_minutes_per_day`: audio accepted in the current UTC day: an upload's
  seconds when it is accepted (refused if it would pass the limit), a v2
  request's when it is answered (refused once the day's minutes are used up).

Counters are single rows updated with one conditional upsert (SQLite and
PostgreSQL alike), never read-then-write. Over a quota is 429 with
Retry-After and a message naming the quota.
"""

from __future__ import annotations

import contextlib
import time

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from musicsplit.errors import QuotaExceeded
from musicsplit.gateway import metrics
from musicsplit.gateway.storage.schema import quota_usage
from musicsplit.gateway.tenancy.tenants import Quota, Tenant


MINUTE, DAY = 60, 86400
ACTIVE_RETRY_S = 10.0  # when a place frees up is unknown: a short wait, then try again
NO_QUOTA = Quota()


class Quotas:
    def __init__(self, engine: AsyncEngine, tenants: dict[str, Tenant], default: Quota = NO_QUOTA):
        """default: the quota of a tenant `tenants` does not list (an OIDC token's)."""
        self.engine = engine
        self.tenants = tenants
        self.default = default
        for name, tenant in tenants.items():  # series exist at 0 from the start, for rate() and alerts
            for outcome in metrics.TENANT_OUTCOMES:
                metrics.TENANT_REQUESTS.labels(tenant=name, outcome=outcome)
            for quota in metrics.QUOTAS:
                if getattr(tenant.quota, quota) is not None:
                    metrics.QUOTA_REJECTIONS.labels(tenant=name, quota=quota)

    def of(self, tenant: str) -> Quota:
        t = self.tenants.get(tenant)
        return t.quota if t else self.default

    # -- requests per minute -----------------------------------------------------------

    async def count_request(self, tenant: str) -> None:
        """Count one request in this minute; QuotaExceeded (uncounted) when the minute's are used up."""
        limit = self.of(tenant).requests_per_minute
        if limit is None:
            return
        now = time.time()
        if await self._add(tenant, "requests_per_minute", int(now // MINUTE), 1.0, limit) is None:
            raise refuse(tenant, "requests_per_minute",
                         f"tenant {tenant!r} has used its quota requests_per_minute ({limit}) for this minute",
                         MINUTE - now % MINUTE)

    # -- concurrent jobs ----------------------------------------------------------------

    def max_active(self, tenant: str) -> int | None:
        return self.of(tenant).concurrent_jobs

    def active_refused(self, tenant: str, active: int, adding: int = 1) -> QuotaExceeded:
        limit = self.of(tenant).concurrent_jobs
        what = "a job" if adding == 1 else f"{adding} jobs"
        return refuse(tenant, "concurrent_jobs",
                      f"tenant {tenant!r} has {active} jobs queued or running and its quota concurrent_jobs is "
                      f"{limit}: {what} more would pass it; wait for a job to finish", ACTIVE_RETRY_S)

    # -- audio minutes per day ------------------------------------------------------------

    async def audio_left(self, tenant: str) -> None:
        """QuotaExceeded when today's audio minutes are used up (checked before a body is read)."""
        limit = self.of(tenant).audio_minutes_per_day
        if limit is None:
            return
        now = time.time()
        async with self.engine.connect() as conn:
            used = (await conn.execute(sa.select(quota_usage.c.used).where(
                quota_usage.c.tenant == tenant, quota_usage.c.quota == "audio_minutes_per_day",
                quota_usage.c.period == int(now // DAY)))).scalar()
        if used is not None and used >= limit * 60:
            raise refuse(tenant, "audio_minutes_per_day",
                         f"tenant {tenant!r} has used its quota audio_minutes_per_day ({limit:g}) for today (UTC)",
                         DAY - now % DAY)

    async def take_audio(self, tenant: str, seconds: float) -> None:
        """Count an accepted upload's audio; QuotaExceeded (uncounted) when it would pass today's minutes."""
        limit = self.of(tenant).audio_minutes_per_day
        now = time.time()
        if limit is not None and (seconds > limit * 60 or await self._add(
                tenant, "audio_minutes_per_day", int(now // DAY), seconds, limit * 60) is None):
            raise refuse(tenant, "audio_minutes_per_day",
                         f"this track ({seconds / 60:.1f} min) would pass tenant {tenant!r}'s quota "
                         f"audio_minutes_per_day ({limit:g}) for today (UTC)", DAY - now % DAY)

    async def add_audio(self, tenant: str, seconds: float) -> None:
        """Count audio already served (a v2 request): it may pass the limit; the next one is refused."""
        if self.of(tenant).audio_minutes_per_day is not None and seconds > 0:
            await self._add(tenant, "audio_minutes_per_day", int(time.time() // DAY), seconds, None)

    async def give_back_audio(self, tenant: str, seconds: float) -> None:
        """Un-count an upload's audio that did not become a job after all."""
        if self.of(tenant).audio_minutes_per_day is not None and seconds > 0:
            await self._add(tenant, "audio_minutes_per_day", int(time.time() // DAY), -seconds, None)

    # -- plumbing ---------------------------------------------------------------------------

    async def _add(self, tenant: str, quota: str, period: int, amount: float, limit: float | None) -> float | None:
        """Add `amount` to the counter unless that passes `limit`: the new total, or None if refused."""
        async with self.engine.begin() as conn:
            insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(quota_usage)
            statement = insert.values(tenant=tenant, quota=quota, period=period, used=amount)
            total = quota_usage.c.used + statement.excluded.used
            statement = statement.on_conflict_do_update(
                index_elements=["tenant", "quota", "period"], set_={"used": total},
                where=(total <= limit) if limit is not None else None).returning(quota_usage.c.used)
            return (await conn.execute(statement)).scalar()

    async def prune(self) -> None:
        """Drop counters of past periods."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(quota_usage).where(sa.or_(
                sa.and_(quota_usage.c.quota == "requests_per_minute", quota_usage.c.period < int(now // MINUTE) - 1),
                sa.and_(quota_usage.c.quota == "audio_minutes_per_day", quota_usage.c.period < int(now // DAY) - 1))))


class UploadSlots:
    """Uploads each tenant streams into this replica at once, capped: one tenant's slow (or many)
    uploads must not take every connection and staging byte from the others."""

    RETRY_AFTER_S = 5.0

    def __init__(self, per_tenant: int):
        self.per_tenant = per_tenant
        self.held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, tenant: str):
        held = self.held.get(tenant, 0)
        if held >= self.per_tenant:
            raise refuse(tenant, "concurrent_uploads",
                         f"tenant {tenant!r} already has {held} uploads in progress here (at most "
                         f"{self.per_tenant} at once); send the next one when one has finished",
                         self.RETRY_AFTER_S)
        self.held[tenant] = held + 1
        try:
            yield
        finally:
            self.held[tenant] -= 1
            if not self.held[tenant]:
                del self.held[tenant]


class SocketSlots:
    """Progress WebSockets open on this replica, capped per tenant and per job: each holds a
    connection and a subscription for as long as its job runs."""

    RETRY_AFTER_S = 10.0

    def __init__(self, per_tenant: int, per_job: int):
        self.per_tenant = per_tenant
        self.per_job = per_job
        self.tenants: dict[str, int] = {}
        self.jobs: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, tenant: str, job_id: str):
        if self.jobs.get(job_id, 0) >= self.per_job:
            raise refuse(tenant, "progress_sockets", f"job {job_id} already has {self.per_job} progress WebSockets "
                         "open; close one, or poll GET /v1/separations/{id}", self.RETRY_AFTER_S)
        if self.tenants.get(tenant, 0) >= self.per_tenant:
            raise refuse(tenant, "progress_sockets", f"tenant {tenant!r} already has {self.per_tenant} progress "
                         "WebSockets open here; close some first", self.RETRY_AFTER_S)
        self.jobs[job_id] = self.jobs.get(job_id, 0) + 1
        self.tenants[tenant] = self.tenants.get(tenant, 0) + 1
        try:
            yield
        finally:
            for counts, key in ((self.jobs, job_id), (self.tenants, tenant)):
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]


def refuse(tenant: str, quota: str, message: str, retry_after: float) -> QuotaExceeded:
    metrics.QUOTA_REJECTIONS.labels(tenant=tenant, quota=quota).inc()
    return QuotaExceeded(message, quota=quota, retry_after=max(1.0, retry_after))

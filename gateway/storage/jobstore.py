"""The job store: separation jobs, re-separation submissions and A/B observations.

A job's row moves queued -> running -> succeeded | failed | cancelled, and
later -> expired when its result files are deleted after the retention
time (the row stays, saying so). Which replica runs a job, and for how long
it may, is the queue's business (jobqueue.py: claims and leases on these rows).

One implementation on SQLAlchemy Core with the async engine, the same code
on SQLite (the embedded default: a WAL file under data_dir) and PostgreSQL
(psycopg 3), chosen by `database_url`. Async because every job, upload and
WebSocket of a gateway shares one event loop: a PostgreSQL round trip or a
lock wait must never stall it. The schema is Alembic's (gateway/storage/migrations/),
upgraded at open, so databases made by older gateways keep working
(database.py: URLs, engines, migrations).

Every job belongs to a tenant. Reads that serve a user take the tenant and
match it, so another tenant's job is simply not there; `tenant=None` is for
the gateway's own work (the runner, the sweeper) and is never fed from a request.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from musicsplit.gateway.storage.database import open_engine, settings_database_url
from musicsplit.gateway.storage.schema import ab_observations, callbacks, jobs, submissions

TERMINAL = ("succeeded", "failed", "cancelled", "expired")
ACTIVE = ("queued", "running")





@dataclass
class SeparationJob:
    """One row of the jobs table."""

    id: str
    status: str
    model: str
    params: dict
    tenant: str
    user_id: str | None = None
    batch_id: str | None = None
    model_version: str | None = None
    arm: str | None = None
    filename: str | None = None
    audio_sha: str | None = None
    idempotency_key: str | None = None
    created: float = 0.0
    updated: float = 0.0
    started: float | None = None
    finished: float | None = None
    chunks_done: int = 0
    chunks_total: int = 0
    error: str | None = None
    error_code: str | None = None
    result: dict = field(default_factory=dict)
    cached: bool = False
    attempts: int = 0
    lease_owner: str | None = None  # the replica running it (jobqueue.py)
    lease_expires: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def progress(self) -> float:
        if self.status == "succeeded":
            return 1.0
        return self.chunks_done / self.chunks_total if self.chunks_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (an event bus carries jobs between replicas as JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SeparationJob":
        return cls(**{**d, "params": d.get("params") or {}, "result": d.get("result") or {},
                      "cached": bool(d.get("cached"))})


class DuplicateIdempotencyKey(Exception):
    """The tenant's user already has a job with this idempotency key (look it up)."""


class ActiveJobLimit(Exception):
    """The tenant already has `max_active` jobs queued or running."""

    def __init__(self, active: int):
        super().__init__(f"{active} jobs active")
        self.active = active


class JobStore(Protocol):
    """What the gateway needs from a job database; `SqlJobStore` is the one implementation."""

    async def create(self, *, tenant: str, model: str, params: dict, user_id: str | None, arm: str | None,
                     filename: str | None, audio_sha: str | None, batch_id: str | None = None,
                     idempotency_key: str | None = None, model_version: str | None = None,
                     job_id: str | None = None, result: dict | None = None,
                     max_active: int | None = None, callback_url: str | None = None) -> SeparationJob: ...

    async def get(self, job_id: str, *, tenant: str | None) -> SeparationJob | None: ...

    async def by_idempotency(self, tenant: str, user_id: str | None, key: str) -> SeparationJob | None: ...

    async def batch(self, tenant: str, batch_id: str) -> list[SeparationJob]: ...

    async def list_jobs(self, tenant: str, *, status: str | None = None, user_id: str | None = None, limit: int = 50,
                   after: tuple[float, str] | None = None) -> list[SeparationJob]: ...

    async def count_active(self, tenant: str) -> int: ...

    async def update(self, job_id: str, **fields: Any) -> SeparationJob | None: ...

    async def transition(self, job_id: str, from_status: tuple[str, ...], *, held_by: str | None = None,
                         **fields: Any) -> SeparationJob | None: ...

    async def unfinished(self) -> list[SeparationJob]: ...

    async def expired(self, older_than: float) -> list[SeparationJob]: ...

    async def record_submission(self, tenant: str, user_id: str, audio_sha: str, model: str,
                                window_s: float) -> bool: ...

    async def record_observation(self, arm: str, model: str, model_version: str | None, outcome: str,
                                 quality: float | None, latency_s: float | None) -> None: ...

    async def observations(self, since: float = 0.0) -> list[dict]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def new_job_id() -> str:
    return uuid.uuid4().hex


def _active_count(tenant: str):
    return sa.select(sa.func.count()).select_from(jobs).where(jobs.c.tenant == tenant, jobs.c.status.in_(ACTIVE))


def _job(row: sa.Row) -> SeparationJob:
    return SeparationJob.from_dict(dict(row._mapping))


class SqlJobStore:
    """The job store on SQLAlchemy Core: SQLite or PostgreSQL, same statements."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    @classmethod
    async def open(cls, url: str) -> "SqlJobStore":
        """Connect and bring the schema up to date (idempotent; safe with several replicas)."""
        return cls(await open_engine(url))

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        """Raise if the database cannot be reached now (readiness)."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def create(self, *, tenant: str, model: str, params: dict, user_id: str | None, arm: str | None,
                     filename: str | None, audio_sha: str | None, batch_id: str | None = None,
                     idempotency_key: str | None = None, model_version: str | None = None,
                     job_id: str | None = None, result: dict | None = None,
                     max_active: int | None = None, callback_url: str | None = None) -> SeparationJob:
        """A new queued job; DuplicateIdempotencyKey when (tenant, user, key) already has one,
        ActiveJobLimit when `max_active` is given and the tenant has that many jobs queued or running.
        With `callback_url`, its completion callback (callbacks.py) is stored in the same transaction:
        no job without the callback it was submitted with.

        `job_id` (from `new_job_id()`): an id chosen before the row exists, so the job's input can be
        stored first and no replica ever claims a job whose input is not there yet."""
        now = time.time()
        job = SeparationJob(id=job_id or new_job_id(), status="queued", model=model, params=params, tenant=tenant,
                            user_id=user_id, batch_id=batch_id, arm=arm, filename=filename, audio_sha=audio_sha,
                            idempotency_key=idempotency_key, created=now, updated=now, model_version=model_version,
                            result=result or {})
        try:
            async with self.engine.begin() as conn:
                if max_active is not None:
                    await self._admit(conn, tenant, max_active)
                await conn.execute(sa.insert(jobs).values(**job.to_dict()))
                if callback_url:
                    await conn.execute(sa.insert(callbacks).values(
                        id=uuid.uuid4().hex, job_id=job.id, tenant=tenant, url=callback_url, state="waiting",
                        attempts=0, next_attempt=now, created=now, updated=now))
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
            raise DuplicateIdempotencyKey(idempotency_key) from None
        return job

    async def get(self, job_id: str, *, tenant: str | None) -> SeparationJob | None:
        """The job, if it exists and (tenant given) belongs to the tenant."""
        query = sa.select(jobs).where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        return await self._one(query)

    async def by_idempotency(self, tenant: str, user_id: str | None, key: str) -> SeparationJob | None:
        return await self._one(sa.select(jobs).where(
            jobs.c.tenant == tenant, sa.func.coalesce(jobs.c.user_id, "") == (user_id or ""),
            jobs.c.idempotency_key == key))

    async def batch(self, tenant: str, batch_id: str) -> list[SeparationJob]:
        return await self._all(sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.batch_id == batch_id)
                               .order_by(jobs.c.created, jobs.c.id))

    async def list_jobs(self, tenant: str, *, status: str | None = None, user_id: str | None = None, limit: int = 50,
                   after: tuple[float, str] | None = None) -> list[SeparationJob]:
        """The tenant's jobs, newest first, from just after `after` (the last (created, id) of a page)."""
        query = sa.select(jobs).where(jobs.c.tenant == tenant)
        if status is not None:
            query = query.where(jobs.c.status == status)
        if user_id is not None:
            query = query.where(jobs.c.user_id == user_id)
        if after is not None:
            created, job_id = after
            query = query.where(sa.or_(jobs.c.created < created,
                                       sa.and_(jobs.c.created == created, jobs.c.id < job_id)))
        return await self._all(query.order_by(jobs.c.created.desc(), jobs.c.id.desc()).limit(limit))

    async def count_active(self, tenant: str) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(_active_count(tenant))).scalar_one()

    async def update(self, job_id: str, **fields: Any) -> SeparationJob | None:
        """Set fields; the job as it is now (None if there is no such job)."""
        return await self._one(sa.update(jobs).where(jobs.c.id == job_id)
                               .values(**fields, updated=time.time()).returning(*jobs.c), write=True)

    async def transition(self, job_id: str, from_status: tuple[str, ...], *, held_by: str | None = None,
                         **fields: Any) -> SeparationJob | None:
        """Update only if the job is still in one of `from_status` (a cancel wins races) and, with
        `held_by`, still leased by that replica (one that lost its lease finishes nothing); the job, or None."""
        query = sa.update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(from_status))
        if held_by is not None:
            query = query.where(jobs.c.lease_owner == held_by)
        return await self._one(query.values(**fields, updated=time.time()).returning(*jobs.c), write=True)

    async def unfinished(self) -> list[SeparationJob]:
        return await self._all(sa.select(jobs).where(jobs.c.status.in_(("queued", "running")))
                               .order_by(jobs.c.created))

    async def expired(self, older_than: float) -> list[SeparationJob]:
        return await self._all(sa.select(jobs).where(jobs.c.status.in_(("succeeded", "failed", "cancelled")),
                                                     jobs.c.finished < older_than))

    # -- re-separation and A/B -------------------------------------------------

    async def record_submission(self, tenant: str, user_id: str, audio_sha: str, model: str,
                                window_s: float) -> bool:
        """Record a submission; True if the same tenant's user sent the same audio within the window."""
        now = time.time()
        async with self.engine.begin() as conn:
            seen = (await conn.execute(sa.select(sa.literal(1)).where(
                submissions.c.tenant == tenant, submissions.c.user_id == user_id,
                submissions.c.audio_sha == audio_sha, submissions.c.model == model,
                submissions.c.created >= now - window_s).limit(1))).first()
            await conn.execute(sa.insert(submissions).values(tenant=tenant, user_id=user_id, audio_sha=audio_sha,
                                                             model=model, created=now))
            await conn.execute(sa.delete(submissions).where(submissions.c.created < now - window_s))
        return seen is not None

    async def record_observation(self, arm: str, model: str, model_version: str | None, outcome: str,
                                 quality: float | None, latency_s: float | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(ab_observations).values(
                ts=time.time(), arm=arm, model=model, model_version=model_version, outcome=outcome,
                quality=quality, latency_s=latency_s))

    async def observations(self, since: float = 0.0) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(ab_observations).where(ab_observations.c.ts >= since))
            return [dict(r._mapping) for r in rows]

    # -- plumbing ----------------------------------------------------------------

    @staticmethod
    async def _admit(conn, tenant: str, max_active: int) -> None:
        # The count and the insert in one transaction: SQLite's BEGIN IMMEDIATE already serialises
        # writers; on PostgreSQL a per-tenant advisory lock does, so two replicas never both admit
        # the last place.
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                               {"key": f"musicsplit-active-jobs:{tenant}"})
        active = (await conn.execute(_active_count(tenant))).scalar_one()
        if active >= max_active:
            raise ActiveJobLimit(active)

    async def _one(self, statement, *, write: bool = False) -> SeparationJob | None:
        async with (self.engine.begin() if write else self.engine.connect()) as conn:
            row = (await conn.execute(statement)).first()
        return _job(row) if row is not None else None

    async def _all(self, statement) -> list[SeparationJob]:
        async with self.engine.connect() as conn:
            return [_job(r) for r in await conn.execute(statement)]


async def open_job_store(settings) -> SqlJobStore:
    return await SqlJobStore.open(settings_database_url(settings))

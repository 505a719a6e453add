"""The job queue every replica shares: the job store's queued rows, claimed with a lease.

A replica claims the next job in one transaction (PostgreSQL: `SELECT ... FOR
UPDATE SKIP LOCKED`, so replicas never wait on each other's rows; SQLite: the
write lock of BEGIN IMMEDIATE, one replica), fairly across tenants, then
across each tenant's users: the least recently served tenant first, within it
the least recently served user, then that user's oldest job. One user's batch
of fifty files does not hold their colleagues back, and a tenant with many
users does not get more turns than a tenant with one.

A claimed job is leased to the replica (`lease_owner`, `lease_expires`) and
the lease is renewed while it runs. A running job whose lease expired (its
replica died, or stalled past the lease) is claimed like a queued one, before
them: a takeover. Everything the lease holder writes while it runs (the chunk
plan, progress, checkpoints, the terminal state) is guarded by the lease, so
a replica that lost its lease changes nothing a user sees.

Lease times are the database's clock, so replicas' clocks need not agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from musicsplit.gateway.storage.jobstore import SeparationJob, _job
from musicsplit.gateway.storage.schema import chunk_checkpoints, chunk_plans, jobs, queue_turns





@dataclass(frozen=True)
class Claimed:
    job: SeparationJob
    taken_over_from: str | None  # the replica whose expired lease this claim ended, if any


@dataclass(frozen=True)
class ChunkPlan:
    chunks: list[tuple[int, int]]  # (start, end) frames of each chunk
    forced: str | None  # why a track was chunked although the chunked-jobs flag is off


class JobQueue(Protocol):
    async def claim(self, owner: str, lease_s: float) -> Claimed | None: ...

    async def renew(self, owner: str, lease_s: float, job_ids: set[str]) -> set[str]: ...

    async def release(self, job_id: str, owner: str) -> None: ...

    async def release_all(self) -> int: ...

    async def queued(self) -> int: ...

    async def plan(self, job_id: str) -> ChunkPlan | None: ...

    async def save_plan(self, job_id: str, owner: str, plan: ChunkPlan) -> bool: ...

    async def progress(self, job_id: str, owner: str, done: int, total: int) -> SeparationJob | None: ...

    async def checkpoint(self, job_id: str, owner: str, index: int, meta: dict, done: int,
                         total: int) -> SeparationJob | None: ...

    async def checkpoints(self, job_id: str) -> dict[int, dict]: ...

    async def forget(self, job_id: str) -> None: ...


def db_now(dialect: str) -> sa.ColumnElement:
    """The database's clock in unix seconds."""
    if dialect == "postgresql":
        return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Double)
    return (sa.func.julianday("now") - 2440587.5) * 86400.0


class SqlJobQueue:
    """The queue on the job store's own tables and engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._insert = pg_insert if self.dialect == "postgresql" else sqlite_insert

    async def claim(self, owner: str, lease_s: float) -> Claimed | None:
        """The next job for `owner` (a replica) to run, leased to it for `lease_s`; None if there is none."""
        now = db_now(self.dialect)
        user_key = sa.func.coalesce(jobs.c.user_id, "")
        tenant_turns = (sa.select(queue_turns.c.tenant, sa.func.max(queue_turns.c.last_claimed).label("last_claimed"))
                        .group_by(queue_turns.c.tenant).subquery("tenant_turns"))
        pick = (sa.select(jobs.c.id, jobs.c.status, jobs.c.lease_owner, jobs.c.tenant, user_key.label("user_key"))
                .select_from(jobs
                             .outerjoin(tenant_turns, tenant_turns.c.tenant == jobs.c.tenant)
                             .outerjoin(queue_turns, sa.and_(queue_turns.c.tenant == jobs.c.tenant,
                                                             queue_turns.c.user_key == user_key)))
                .where(sa.or_(jobs.c.status == "queued",
                              sa.and_(jobs.c.status == "running", sa.func.coalesce(jobs.c.lease_expires, 0.0) < now)))
                .order_by(sa.case((jobs.c.status == "running", 0), else_=1),
                          sa.func.coalesce(tenant_turns.c.last_claimed, 0.0),
                          sa.func.coalesce(queue_turns.c.last_claimed, 0.0), jobs.c.created, jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True, of=jobs))
        async with self.engine.begin() as conn:
            row = (await conn.execute(pick)).first()
            if row is None:
                return None
            claimed = (await conn.execute(
                sa.update(jobs).where(jobs.c.id == row.id)
                .values(status="running", lease_owner=owner, lease_expires=now + lease_s,
                        started=sa.func.coalesce(jobs.c.started, time.time()), attempts=jobs.c.attempts + 1,
                        updated=time.time())
                .returning(*jobs.c))).first()
            turn = self._insert(queue_turns).values(tenant=row.tenant, user_key=row.user_key, last_claimed=now)
            await conn.execute(turn.on_conflict_do_update(index_elements=["tenant", "user_key"],
                                                          set_={"last_claimed": now}))
        return Claimed(_job(claimed), row.lease_owner if row.status == "running" else None)

    async def renew(self, owner: str, lease_s: float, job_ids: set[str]) -> set[str]:
        """Extend the leases `owner` holds on the running jobs `job_ids` (the ones it is still running:
        a row whose task ended without its terminal write is not renewed, so its lease expires and
        another replica takes it over); the ids it still holds."""
        if not job_ids:
            return set()
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                sa.update(jobs).where(jobs.c.id.in_(sorted(job_ids)), jobs.c.lease_owner == owner,
                                      jobs.c.status == "running")
                .values(lease_expires=db_now(self.dialect) + lease_s).returning(jobs.c.id))
            return {r.id for r in rows}

    async def release(self, job_id: str, owner: str) -> None:
        """Give a running job up (shutdown): another replica resumes it at once, from its checkpoints."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner,
                                                     jobs.c.status == "running").values(lease_expires=0.0))

    async def release_all(self) -> int:
        """Every running job resumable at once: for a store only one replica uses (SQLite), at start-up."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.update(jobs).where(jobs.c.status == "running").values(lease_expires=0.0))
            return result.rowcount

    async def queued(self) -> int:
        """Jobs waiting for any replica (the queue bound counts these)."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == "queued"))).scalar_one())

    # -- a running job's plan, progress and checkpoints (all guarded by the lease) ---------------

    async def plan(self, job_id: str) -> ChunkPlan | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(chunk_plans).where(chunk_plans.c.job_id == job_id))).first()
        return ChunkPlan([tuple(c) for c in row.chunks], row.forced) if row is not None else None

    async def save_plan(self, job_id: str, owner: str, plan: ChunkPlan) -> bool:
        """Record a job's chunk plan, which every later attempt follows; False if the lease is lost."""
        async with self.engine.begin() as conn:
            if not await self._holds(conn, job_id, owner):
                return False
            await conn.execute(self._insert(chunk_plans).values(
                job_id=job_id, chunks=[list(c) for c in plan.chunks], forced=plan.forced)
                .on_conflict_do_nothing(index_elements=["job_id"]))
        return True

    async def progress(self, job_id: str, owner: str, done: int, total: int) -> SeparationJob | None:
        """Set chunks done (never lower than before) while `owner` holds the job; None if it does not."""
        async with self.engine.begin() as conn:
            return await self._progress(conn, job_id, owner, done, total)

    async def checkpoint(self, job_id: str, owner: str, index: int, meta: dict, done: int,
                         total: int) -> SeparationJob | None:
        """Record chunk `index` as finished (its stems are in the result store) with its progress;
        None, recording nothing, if `owner` no longer holds the job."""
        async with self.engine.begin() as conn:
            job = await self._progress(conn, job_id, owner, done, total)
            if job is None:
                return None
            row = {"job_id": job_id, "idx": index, "meta": meta, "created": time.time()}
            await conn.execute(self._insert(chunk_checkpoints).values(**row).on_conflict_do_update(
                index_elements=["job_id", "idx"], set_={"meta": meta, "created": row["created"]}))
        return job

    async def checkpoints(self, job_id: str) -> dict[int, dict]:
        """Finished chunks recorded for the job: index -> what its attempt recorded."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(chunk_checkpoints.c.idx, chunk_checkpoints.c.meta)
                                      .where(chunk_checkpoints.c.job_id == job_id))
            return {r.idx: r.meta for r in rows}

    async def forget(self, job_id: str) -> None:
        """Drop a finished job's plan and checkpoint records."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(chunk_checkpoints).where(chunk_checkpoints.c.job_id == job_id))
            await conn.execute(sa.delete(chunk_plans).where(chunk_plans.c.job_id == job_id))

    async def _holds(self, conn, job_id: str, owner: str) -> bool:
        return (await conn.execute(sa.select(sa.literal(1)).where(
            jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == "running"))).first() is not None

    async def _progress(self, conn, job_id: str, owner: str, done: int, total: int) -> SeparationJob | None:
        row = (await conn.execute(
            sa.update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == "running")
            .values(chunks_done=sa.case((jobs.c.chunks_done > done, jobs.c.chunks_done), else_=done),
                    chunks_total=total, updated=time.time())
            .returning(*jobs.c))).first()
        return _job(row) if row is not None else None


class LeaseLost(Exception):
    """This replica no longer holds the job: another one took it over, or it was cancelled or finished."""


class JobLease:
    """One running job as its lease holder sees it: every write guarded, every change published."""

    def __init__(self, queue: JobQueue, job_id: str, owner: str, on_change: Callable[[SeparationJob], Awaitable]):
        self.queue = queue
        self.job_id = job_id
        self.owner = owner
        self.on_change = on_change

    async def plan(self) -> ChunkPlan | None:
        return await self.queue.plan(self.job_id)

    async def save_plan(self, plan: ChunkPlan) -> None:
        if not await self.queue.save_plan(self.job_id, self.owner, plan):
            raise LeaseLost(self.job_id)

    async def checkpoints(self) -> dict[int, dict]:
        return await self.queue.checkpoints(self.job_id)

    async def progress(self, done: int, total: int) -> None:
        await self._changed(await self.queue.progress(self.job_id, self.owner, done, total))

    async def checkpoint(self, index: int, meta: dict, done: int, total: int) -> None:
        await self._changed(await self.queue.checkpoint(self.job_id, self.owner, index, meta, done, total))

    async def _changed(self, job: SeparationJob | None) -> None:
        if job is None:
            raise LeaseLost(self.job_id)
        await self.on_change(job)

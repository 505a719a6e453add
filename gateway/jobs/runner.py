"""The job runner: this replica's workers claim jobs from the shared queue and see each through
to a terminal state.

  claim (jobqueue.py: fair across owners, leased) -> input there? -> cache again (a duplicate
  may have finished) -> join an identical job running here (single flight) -> separate
  (separation.py; resumes from checkpoints after a takeover) -> cache, metrics, A/B, publish

Every change of a job's row is published on the event bus. While a job
runs its lease is renewed; a job this replica no longer holds (taken over
after a stall, cancelled through another replica) is stopped here without
touching what the new holder writes. The terminal state is set once, by
the holder (transitions guarded by the lease). On shutdown the jobs running
here are given up so another replica resumes them at once; a replica that
dies loses its leases when they expire and another replica takes its jobs
over (`musicsplit_gateway_job_takeovers_total`).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace

from musicsplit.errors import MusicsplitError
from musicsplit.gateway import metrics
from musicsplit.gateway.storage.cache import cache_key
from musicsplit.gateway.jobs.events import EventBus
from musicsplit.gateway.experiments.flags import CACHE_FLAG, CHUNKED_FLAG, Flags
from musicsplit.gateway.jobs.jobqueue import Claimed, JobLease, JobQueue, LeaseLost
from musicsplit.gateway.storage.jobstore import JobStore, SeparationJob
from musicsplit.gateway.error_reports import report
from musicsplit.gateway.jobs.observations import Observations
from musicsplit.gateway.upstream.regions import EndpointPool
from musicsplit.gateway.storage.results import ResultStore
from musicsplit.gateway.jobs.separation import ChunkedSeparation, Outcome
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.upstream.shadow import ShadowMirror
from musicsplit.gateway.tenancy.callers import Caller
from musicsplit.gateway.upstream.routing import Router
from musicsplit.telemetry import extract, inject

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")


TERMINAL_WRITE_TRIES = 3


class TerminalWriteFailed(Exception):
    """A job's terminal state could not be written (the job store failed on every try)."""


@dataclass
class _Leader:
    future: asyncio.Future
    job: SeparationJob


class JobRunner:
    def __init__(self, settings: GatewaySettings, *, store: JobStore, queue: JobQueue, results: ResultStore,
                 events: EventBus, router: Router, pool: EndpointPool, flags: Flags, cache,
                 observations: Observations, replica: str, shadow: ShadowMirror | None = None):
        self.settings = settings
        self.store = store
        self.queue = queue
        self.results = results
        self.events = events
        self.router = router
        self.pool = pool
        self.flags = flags
        self.cache = cache
        self.observations = observations
        self.replica = replica  # this process: the lease owner of the jobs it runs
        self.shadow = shadow
        self._slots = asyncio.Semaphore(max(1, settings.max_running_jobs))
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._running: dict[str, asyncio.Task] = {}
        self._claimed_at: dict[str, float] = {}
        self._leaders: dict[str, _Leader] = {}
        self._trace_carriers: dict[str, dict[str, str]] = {}  # job id -> the submit's traceparent

    async def start(self, *, sole_replica: bool) -> None:
        """sole_replica: no other replica uses this job store (SQLite), so every job still marked
        running is a previous life's: resume them at once instead of after their leases expire."""
        if sole_replica and (count := await self.queue.release_all()):
            log.info("resuming %d job(s) left running by the previous start", count)
        if self.settings.max_running_jobs <= 0:
            log.info("max_running_jobs is 0: this replica serves the API and runs no jobs")
            return
        self._tasks = [asyncio.create_task(self._dispatch(), name="job-dispatcher"),
                       asyncio.create_task(self._renew(), name="lease-renewer")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = dict(self._running)
        for t in running.values():
            t.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        for job_id in running:  # another replica resumes them from their checkpoints, without waiting
            try:
                await self.queue.release(job_id, self.replica)
            except Exception as exc:  # the store is gone too: the leases expire instead
                log.warning("could not give up job %s at shutdown (%s); its lease will expire", job_id, exc)

    async def enqueue(self, job: SeparationJob) -> None:
        """A job stored as queued: wake a worker here (other replicas find it when they poll);
        its spans join the caller's trace if it runs here."""
        self._trace_carriers[job.id] = inject({})
        # Bounded however the jobs end: the queue holds at most max_queued_jobs, so older carriers
        # are of jobs another replica ran (their terminal state never passes through here).
        while len(self._trace_carriers) > max(1, self.settings.max_queued_jobs):
            self._trace_carriers.pop(next(iter(self._trace_carriers)))
        self._wake.set()

    async def publish(self, job: SeparationJob | None) -> None:
        if job is not None:
            if job.terminal:
                self._trace_carriers.pop(job.id, None)
            await self.events.publish(job)

    # -- cache ---------------------------------------------------------------------------

    def cache_key(self, job: SeparationJob, version: str | None) -> str | None:
        if not version or not job.audio_sha:
            return None
        return cache_key(job.audio_sha, job.model, version, job.params, job.tenant)

    async def answer_from_cache(self, job: SeparationJob, *, held: bool = False) -> bool:
        """Finish the job from the result cache; True if it was there. A queued job (at submit) is
        finished only while still queued; a running one only by its lease holder (held)."""
        if not self.flags.enabled(CACHE_FLAG, Caller.of(job).flag_user):
            return False
        key = self.cache_key(job, self.pool.version(job.model))
        if key is None:
            return False
        staging = self.settings.staging_dir
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as scratch, \
                tracer.start_as_current_span("cache.lookup", attributes={"cache.backend": self.cache.backend}) as span:
            hit = await self.cache.get(key, Path(scratch))
            span.set_attribute("cache.hit", hit is not None)
            if hit is None:
                return False
            await self.results.put_stems(job, hit.files)
        now = time.time()
        fields = dict(status="succeeded", cached=True, result={**job.result, **hit.meta, "cached": True},
                      model_version=hit.meta.get("model_version"), finished=now, started=job.started or now)
        done = (await self._terminal(job.id, **fields) if held
                else await self.store.transition(job.id, ("queued",), **fields))
        if done is None:
            if held:
                raise LeaseLost(job.id)  # cancelled, or no longer this replica's
            return False  # cancelled, or claimed by a worker meanwhile (which finds the cache itself)
        await self.results.delete(done, keep_results=True)
        await self.queue.forget(job.id)
        await self.observations.job_finished(done, "success", ab=False)  # milliseconds, not the arm's latency
        await self.publish(done)
        return True

    # -- claiming --------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                claimed = await self._claim_next()
            except BaseException:
                self._slots.release()
                raise
            job_id = claimed.job.id
            self._claimed_at[job_id] = time.monotonic()
            task = asyncio.create_task(self._run(claimed), name=f"job-{job_id}")
            self._running[job_id] = task
            metrics.RUNNING.set(len(self._running))
            task.add_done_callback(lambda t, j=job_id: self._finished(j, t))

    async def _claim_next(self) -> Claimed:
        while True:
            self._wake.clear()
            try:
                claimed = await self.queue.claim(self.replica, self.settings.lease_seconds)
            except Exception as exc:  # the job store is down: readiness says so; keep looking
                log.warning("could not claim a job (%s); trying again", exc)
                claimed = None
            if claimed is not None:
                return claimed
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.queue_poll_s)
            except asyncio.TimeoutError:
                pass

    def _finished(self, job_id: str, task: asyncio.Task) -> None:
        self._running.pop(job_id, None)
        self._claimed_at.pop(job_id, None)
        self._slots.release()
        metrics.RUNNING.set(len(self._running))
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - _run handles its own
            log.error("job %s crashed", job_id, exc_info=task.exception())

    async def _renew(self) -> None:
        """Keep this replica's leases; stop the jobs it no longer holds."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            if not self._running:
                continue
            asked = time.monotonic()
            try:
                held = await self.queue.renew(self.replica, self.settings.lease_seconds, set(self._running))
            except Exception as exc:  # the store is down: leases may expire; renewed when it is back
                log.warning("could not renew leases (%s)", exc)
                continue
            for job_id, task in list(self._running.items()):
                if job_id not in held and self._claimed_at.get(job_id, asked) < asked:
                    log.warning("job %s: this replica no longer holds it (taken over, cancelled or finished "
                                "elsewhere); stopping it here", job_id)
                    task.cancel()

    # -- running -------------------------------------------------------------------------

    async def _run(self, claimed: Claimed) -> None:
        # The job's spans continue the trace of the request that submitted it (when submitted here).
        ctx = extract(self._trace_carriers.pop(claimed.job.id, None))
        with tracer.start_as_current_span("job", context=ctx, attributes={"job.id": claimed.job.id}):
            try:
                await self._run_job(claimed)
            except TerminalWriteFailed as exc:
                await self._give_up(claimed.job.id, exc)

    async def _give_up(self, job_id: str, exc: "TerminalWriteFailed") -> None:
        """The terminal write failed on every try: hand the job to whichever replica claims it next
        (it runs again from its checkpoints). If even that fails, its lease is no longer renewed
        (renew covers only the jobs running here) and expires instead."""
        log.error("job %s: %s; giving it up for another run", job_id, exc)
        try:
            await self.queue.release(job_id, self.replica)
        except Exception as release_exc:
            log.warning("could not give up job %s (%s); its lease expires in %.0f s", job_id, release_exc,
                        self.settings.lease_seconds)
        self._wake.set()

    async def _run_job(self, claimed: Claimed) -> None:
        job = claimed.job
        if claimed.taken_over_from:
            metrics.TAKEOVERS.inc()
            log.info("took over job %s from replica %s (its lease expired)", job.id, claimed.taken_over_from)
        await self.publish(job)
        try:
            if not await self.results.has_input(job):
                await self._fail(job, "input_lost", "this job's input was lost; submit it again")
                return
            if await self.answer_from_cache(job, held=True):
                return
            # Single flight per tenant, as the cache: joining another tenant's run would reveal it.
            key = (self.cache_key(job, self.pool.version(job.model))
                   or f"{job.tenant}:{job.audio_sha}:{job.model}:{job.params}")
            while (leader := self._leaders.get(key)) is not None:
                # An identical job is running here: wait for its result instead of computing twice,
                # for a while; a leader that takes longer (a hung predictor) is not waited on forever.
                done, _ = await asyncio.wait([leader.future], timeout=self.settings.single_flight_wait_s)
                if not done:
                    log.warning("job %s: the identical job %s it waited on is still running after %.0f s; "
                                "separating it on its own", job.id, leader.job.id, self.settings.single_flight_wait_s)
                    break
                if not leader.future.cancelled() and leader.future.exception() is None:
                    outcome: Outcome = leader.future.result()
                    await self.results.copy_stems(leader.job, job, outcome.stems, outcome.result["output_format"])
                    await self._succeed(job, Outcome(job.id, outcome.stems,
                                                     {**outcome.result, "deduplicated_from": leader.job.id},
                                                     outcome.version, outcome.model), ab=False)
                    return
                # The leader failed or was cancelled: this job tries on its own (or follows a new leader).
            fut = asyncio.get_running_loop().create_future()
            self._leaders[key] = _Leader(fut, job)
            try:
                outcome = await self._separate(job)
                await self._cache(job, outcome)
                fut.set_result(outcome)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: followers see it through leader.future
                raise
            finally:
                if self._leaders.get(key) is not None and self._leaders[key].future is fut:
                    del self._leaders[key]
            await self._succeed(job, outcome)
        except asyncio.CancelledError:
            await asyncio.shield(self._stopped(job.id))
            raise  # shutdown: given up in stop(), resumed by another replica (or this one's next start)
        except LeaseLost:
            await self._stopped(job.id)
        except TerminalWriteFailed:
            raise  # not the job's failure: the store's (_run gives the job up)
        except MusicsplitError as exc:
            await self._fail(job, exc.code, exc.message)
        except Exception as exc:
            reference = report(exc, f"job {job.id}", job_model=job.model)
            await self._fail(job, "internal_error", f"the separation failed unexpectedly; it has been reported "
                                                    f"(reference {reference}), please try again")

    async def _stopped(self, job_id: str) -> None:
        """A job stopped here before its end: clean up if it was cancelled while this replica held it;
        otherwise (taken over, or shutdown) leave everything to the next holder."""
        current = await self.store.get(job_id, tenant=None)
        if current and current.status == "cancelled" and current.lease_owner == self.replica:
            await self._cancelled(current)

    async def _separate(self, job: SeparationJob) -> Outcome:
        caller = Caller.of(job)
        lease = JobLease(self.queue, job.id, self.replica, self.publish)
        return await ChunkedSeparation(job, settings=self.settings, router=self.router, results=self.results,
                                       lease=lease, chunked=self.flags.enabled(CHUNKED_FLAG, caller.flag_user),
                                       fallback=self.flags.fallback_model(caller.flag_user), mirror=self.shadow).run()

    async def _cache(self, job: SeparationJob, outcome: Outcome) -> None:
        key = self.cache_key(job, outcome.version)
        if (key and outcome.model == job.model
                and self.flags.enabled(CACHE_FLAG, Caller.of(job).flag_user)):
            fmt = outcome.result["output_format"]
            async with self.results.stem_files(job, outcome.stems, fmt) as files:
                with tracer.start_as_current_span("cache.store", attributes={"cache.backend": self.cache.backend}):
                    await self.cache.put(key, outcome.result, files)

    async def _succeed(self, job: SeparationJob, outcome: Outcome, *, ab: bool = True) -> None:
        result = {**job.result, **outcome.result}
        result.pop("input_warnings", None)
        chunks = result.get("chunks", 0) or 0
        done = await self._terminal(job.id, status="succeeded", result=result, finished=time.time(),
                                    model_version=outcome.version, chunks_done=chunks, chunks_total=chunks)
        if done is None:
            await self._stopped(job.id)  # cancelled meanwhile, or no longer ours
            return
        await self.results.delete(done, keep_results=True)
        await self.queue.forget(job.id)
        await self.observations.job_finished(done, "success", ab=ab)
        await self.publish(done)

    async def _fail(self, job: SeparationJob, code: str, message: str) -> None:
        failed = await self._terminal(job.id, status="failed", error_code=code, error=message,
                                      finished=time.time())
        if failed is None:
            await self._stopped(job.id)
            return
        await self.results.delete(failed)
        await self.queue.forget(job.id)
        await self.observations.job_finished(failed, "failure")
        await self.publish(failed)

    async def _terminal(self, job_id: str, **fields) -> SeparationJob | None:
        """Write a running job's terminal state (None: no longer this replica's). A store error is
        tried again, within a third of the lease; TerminalWriteFailed if every try failed."""
        tries = TERMINAL_WRITE_TRIES
        pause = self.settings.lease_seconds / 3 / (2 ** tries)
        for attempt in range(tries):
            try:
                return await self.store.transition(job_id, ("running",), held_by=self.replica, **fields)
            except Exception as exc:
                if attempt == tries - 1:
                    raise TerminalWriteFailed(f"could not write its {fields['status']} state "
                                              f"after {tries} tries ({exc})") from exc
                log.warning("job %s: writing its %s state failed (%s); trying again", job_id, fields["status"], exc)
                await asyncio.sleep(pause * 2 ** attempt)
        raise AssertionError("unreachable")

    async def _cancelled(self, job: SeparationJob) -> None:
        await self.results.delete(job)
        await self.queue.forget(job.id)
        await self.observations.job_finished(job, "cancelled")
        await self.publish(job)

    # -- cancel --------------------------------------------------------------------------

    async def cancel(self, job: SeparationJob) -> SeparationJob:
        """Stop a queued or running job; a finished job is returned unchanged. A job running on
        another replica stops there when its holder next renews its lease (a third of the lease)."""
        if job.terminal:
            return job
        fields = dict(status="cancelled", finished=time.time(), error_code="cancelled",
                      error="cancelled by the client")
        cancelled = await self.store.transition(job.id, ("queued",), **fields)
        if cancelled is not None:  # no replica had it
            await self._cancelled(cancelled)
        elif (cancelled := await self.store.transition(job.id, ("running",), **fields)) is not None:
            task = self._running.get(job.id)
            if task is not None:
                task.cancel()  # its holder (here) cleans up
                await asyncio.gather(task, return_exceptions=True)
            elif (cancelled.lease_expires or 0.0) < time.time():
                await self._cancelled(cancelled)  # its holder is gone: nobody else will
        return await self.store.get(job.id, tenant=None) or job

"""The job runner: workers take queued jobs and see each through to a terminal state.

  run: cache again (a duplicate may have finished) -> join an identical job
       already running (single flight) -> separate (separation.py) ->
       cache, metrics, A/B, publish

Every change of a job's row is published on the event bus. Jobs found
queued or running at start-up are queued again (their input is stored); a
job whose input is gone fails as `input_lost`.
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
from musicsplit.gateway.cache import cache_key
from musicsplit.gateway.events import EventBus
from musicsplit.gateway.flags import CACHE_FLAG, CHUNKED_FLAG, Flags
from musicsplit.gateway.jobstore import JobStore, SeparationJob
from musicsplit.gateway.notify import report
from musicsplit.gateway.observations import Observations
from musicsplit.gateway.regions import EndpointPool
from musicsplit.gateway.results import ResultStore
from musicsplit.gateway.scheduling import FairQueue
from musicsplit.gateway.separation import ChunkedSeparation, Outcome
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.shadow import ShadowMirror
from musicsplit.gateway.tenancy import Caller
from musicsplit.gateway.upstream import Router
from musicsplit.telemetry import extract, inject

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")


@dataclass
class _Leader:
    future: asyncio.Future
    job_id: str


class JobRunner:
    def __init__(self, settings: GatewaySettings, *, store: JobStore, results: ResultStore, events: EventBus,
                 router: Router, pool: EndpointPool, flags: Flags, cache, observations: Observations,
                 shadow: ShadowMirror | None = None):
        self.settings = settings
        self.store = store
        self.results = results
        self.events = events
        self.router = router
        self.pool = pool
        self.flags = flags
        self.cache = cache
        self.observations = observations
        self.shadow = shadow
        self.queue = FairQueue(settings.max_queued_jobs)
        self._workers: list[asyncio.Task] = []
        self._running: dict[str, asyncio.Task] = {}
        self._leaders: dict[str, _Leader] = {}
        self._trace_carriers: dict[str, dict[str, str]] = {}  # job id -> the submit's traceparent

    async def start(self) -> None:
        for job in await self.store.unfinished():  # a restart loses no job
            if not await self.results.has_input(job.id):
                await self.store.update(job.id, status="failed", error_code="input_lost", finished=time.time(),
                                        error="the gateway restarted and this job's input was lost; submit it again")
                continue
            await self.store.update(job.id, status="queued")
            self.queue.put_nowait(Caller.of(job).owner, job.id, force=True)
            log.info("re-queued job %s after restart", job.id)
        metrics.QUEUE.set(len(self.queue))
        self._workers = [asyncio.create_task(self._worker(), name=f"job-worker-{i}")
                         for i in range(self.settings.max_running_jobs)]
        await self.queue.notify()

    async def stop(self) -> None:
        tasks = [*self._workers, *self._running.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def enqueue(self, job: SeparationJob, *, force: bool = False) -> None:
        """Queue a stored job (QueueFull beyond the bound unless force); its spans join the caller's trace."""
        self._trace_carriers[job.id] = inject({})
        try:
            self.queue.put_nowait(Caller.of(job).owner, job.id, force=force)
        except BaseException:
            self._trace_carriers.pop(job.id, None)
            raise
        metrics.QUEUE.set(len(self.queue))
        await self.queue.notify()

    async def publish(self, job: SeparationJob | None) -> None:
        if job is not None:
            await self.events.publish(job)

    # -- cache ---------------------------------------------------------------------------

    def cache_key(self, job: SeparationJob, version: str | None) -> str | None:
        if not version or not job.audio_sha:
            return None
        return cache_key(job.audio_sha, job.model, version, job.params, job.tenant)

    async def answer_from_cache(self, job: SeparationJob) -> bool:
        """Finish the job from the result cache; True if it was there."""
        if not self.flags.enabled(CACHE_FLAG, Caller.of(job).flag_user):
            return False
        key = self.cache_key(job, self.pool.version(job.model))
        if key is None:
            return False
        staging = Path(self.settings.data_dir) / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as scratch, \
                tracer.start_as_current_span("cache.lookup", attributes={"cache.backend": self.cache.backend}) as span:
            hit = await self.cache.get(key, Path(scratch))
            span.set_attribute("cache.hit", hit is not None)
            if hit is None:
                return False
            await self.results.put_stems(job.id, hit.files)
        now = time.time()
        done = await self.store.transition(job.id, ("queued", "running"), status="succeeded", cached=True,
                                           result={**job.result, **hit.meta, "cached": True},
                                           model_version=hit.meta.get("model_version"), finished=now, started=now)
        if done is None:  # cancelled meanwhile
            await self.results.delete(job.id)
            return True
        await self.results.delete_input(job.id)
        await self.observations.job_finished(done, "success", ab=False)  # milliseconds, not the arm's latency
        await self.publish(done)
        return True

    # -- running -------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job_id = await self.queue.get()
            metrics.QUEUE.set(len(self.queue))
            task = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
            self._running[job_id] = task
            metrics.RUNNING.set(len(self._running))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the worker itself was cancelled (shutdown)
                    task.cancel()
                    raise
            except Exception:  # pragma: no cover - _run handles its own errors
                log.exception("job %s crashed", job_id)
            finally:
                self._running.pop(job_id, None)
                metrics.RUNNING.set(len(self._running))

    async def _run(self, job_id: str) -> None:
        # The job's spans continue the trace of the request that submitted it.
        ctx = extract(self._trace_carriers.pop(job_id, None))
        with tracer.start_as_current_span("job", context=ctx, attributes={"job.id": job_id}):
            await self._run_job(job_id)

    async def _run_job(self, job_id: str) -> None:
        job = await self.store.transition(job_id, ("queued",), status="running", started=time.time())
        if job is None:
            return  # cancelled while queued
        await self.publish(job)
        try:
            if await self.answer_from_cache(job):
                return
            # Single flight per tenant, as the cache: joining another tenant's run would reveal it.
            key = (self.cache_key(job, self.pool.version(job.model))
                   or f"{job.tenant}:{job.audio_sha}:{job.model}:{job.params}")
            while (leader := self._leaders.get(key)) is not None:
                # An identical job is running: wait for its result instead of computing twice.
                await asyncio.wait([leader.future])
                if not leader.future.cancelled() and leader.future.exception() is None:
                    outcome: Outcome = leader.future.result()
                    await self.results.copy_stems(outcome.job_id, job.id, outcome.stems,
                                                  outcome.result["output_format"])
                    await self._succeed(job, Outcome(job.id, outcome.stems,
                                                     {**outcome.result, "deduplicated_from": leader.job_id},
                                                     outcome.version, outcome.model), ab=False)
                    return
                # The leader failed or was cancelled: this job tries on its own (or follows a new leader).
            fut = asyncio.get_running_loop().create_future()
            self._leaders[key] = _Leader(fut, job_id)
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
            current = await asyncio.shield(self.store.get(job_id, tenant=None))
            if current and current.status == "cancelled":
                await asyncio.shield(self._cancelled(current))
            raise  # shutdown: the row stays "running" and is re-queued at the next start
        except MusicsplitError as exc:
            await self._fail(job, exc.code, exc.message)
        except Exception as exc:
            reference = report(exc, f"job {job_id}", job_model=job.model)
            await self._fail(job, "internal_error", f"the separation failed unexpectedly; it has been reported "
                                                    f"(reference {reference}), please try again")

    async def _separate(self, job: SeparationJob) -> Outcome:
        caller = Caller.of(job)

        async def progress(done: int, total: int) -> None:
            await self.publish(await self.store.update(job.id, chunks_done=done, chunks_total=total))

        return await ChunkedSeparation(job, settings=self.settings, router=self.router, results=self.results,
                                       chunked=self.flags.enabled(CHUNKED_FLAG, caller.flag_user),
                                       fallback=self.flags.fallback_model(caller.flag_user),
                                       on_progress=progress, mirror=self.shadow).run()

    async def _cache(self, job: SeparationJob, outcome: Outcome) -> None:
        key = self.cache_key(job, outcome.version)
        if (key and outcome.model == job.model
                and self.flags.enabled(CACHE_FLAG, Caller.of(job).flag_user)):
            files = await self.results.stem_files(job.id, outcome.stems, outcome.result["output_format"])
            with tracer.start_as_current_span("cache.store", attributes={"cache.backend": self.cache.backend}):
                await self.cache.put(key, outcome.result, files)

    async def _succeed(self, job: SeparationJob, outcome: Outcome, *, ab: bool = True) -> None:
        result = {**job.result, **outcome.result}
        result.pop("input_warnings", None)
        chunks = result.get("chunks", 0) or 0
        done = await self.store.transition(job.id, ("running",), status="succeeded", result=result,
                                           finished=time.time(), model_version=outcome.version,
                                           chunks_done=chunks, chunks_total=chunks)
        await self.results.delete_input(job.id)
        if done is not None:
            await self.observations.job_finished(done, "success", ab=ab)
            await self.publish(done)

    async def _fail(self, job: SeparationJob, code: str, message: str) -> None:
        failed = await self.store.transition(job.id, ("queued", "running"), status="failed", error_code=code,
                                             error=message, finished=time.time())
        if failed is not None:
            await self.results.delete(job.id)
            await self.observations.job_finished(failed, "failure")
            await self.publish(failed)

    async def _cancelled(self, job: SeparationJob) -> None:
        await self.results.delete(job.id)
        await self.observations.job_finished(job, "cancelled")
        await self.publish(job)

    # -- cancel --------------------------------------------------------------------------

    async def cancel(self, job: SeparationJob) -> SeparationJob:
        """Stop a queued or running job; a finished job is returned unchanged."""
        if job.terminal:
            return job
        cancelled = await self.store.transition(job.id, ("queued", "running"), status="cancelled",
                                                finished=time.time(), error_code="cancelled",
                                                error="cancelled by the client")
        if cancelled is not None:
            if self.queue.remove(lambda i: i == job.id):
                metrics.QUEUE.set(len(self.queue))
                await self._cancelled(cancelled)
            task = self._running.get(job.id)
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return await self.store.get(job.id, tenant=None) or job

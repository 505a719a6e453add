"""The separation service: submit, schedule, run (chunked), publish progress, keep results.

Everything the HTTP layer (app.py) exposes is a method here, so the same
logic serves single uploads, batches and restarts. A job's life:

  submit: validate + store input (intake.py) -> flags choose model/arm ->
          cache hit? done in milliseconds : queue (bounded, fair; 429 beyond)
  run:    cache again (a duplicate may have finished) -> join an identical
          job already running (single flight) -> chunks to predictors,
          `chunk_concurrency` at a time, at most `chunk_window` held ->
          overlap-add straight into the stem files -> cache, metrics, A/B
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import re

import numpy as np
import soundfile as sf
from opentelemetry import trace

from musicsplit.audio import ENCODINGS
from musicsplit.errors import BadRequest, MusicsplitError, Saturated, UpstreamUnavailable
from musicsplit.gateway import metrics
from musicsplit.gateway.cache import cache_key, make_cache
from musicsplit.gateway.chunking import Assembler, plan_chunks
from musicsplit.gateway.flags import CACHE_FLAG, CHUNKED_FLAG, Choice, Flags
from musicsplit.gateway.intake import read_frames, take
from musicsplit.gateway.jobs import Job, JobStore
from musicsplit.gateway.notify import Notifier, capture
from musicsplit.gateway.regions import EndpointPool
from musicsplit.gateway.scheduling import FairQueue, QueueFull
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.upstream import Router
from musicsplit.telemetry import extract, inject

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")

EXPLICIT_ARM = "explicit"  # the caller named a model: no A/B assignment


class UpstreamProtocolError(RuntimeError):
    """A predictor answered 200 with something that is not a separation (a bug to report)."""


@dataclass
class Request:
    """What a caller asked for, validated."""

    model: str = "default"
    stems: list[str] | None = None
    output_format: str = "wav"
    shifts: int | None = None
    user_id: str | None = None
    idempotency_key: str | None = None
    filename: str | None = None

    def params(self) -> dict:
        return {"stems": sorted(self.stems) if self.stems else None, "output_format": self.output_format,
                "shifts": self.shifts}


@dataclass
class _Leader:
    future: asyncio.Future
    job_id: str


@dataclass
class Outcome:
    files: dict[str, Path]
    result: dict
    version: str | None
    model: str
    cacheable: bool = True  # False when chunks came from more than one model version


def _version_key(version: str) -> tuple:
    """'1.10' after '1.9': numeric parts compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+]", version))


class SeparationService:
    def __init__(self, settings: GatewaySettings, *, flags: Flags | None = None):
        self.settings = settings
        self.limits = settings.limits()
        self.data_dir = Path(settings.data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.db_path)
        self.notifier = Notifier(settings)
        self.pool = EndpointPool(settings.endpoints, settings.region_order, failures=settings.breaker_failures,
                                 reset_s=settings.breaker_reset_s, on_breaker_change=self._breaker_changed,
                                 on_not_ready=self._model_not_ready)
        self.router = Router(settings, self.pool)
        self.flags = flags or Flags(settings)
        self.cache = make_cache(settings)
        self.queue = FairQueue(settings.max_queued_jobs)
        self._workers: list[asyncio.Task] = []
        self._running: dict[str, asyncio.Task] = {}
        self._subscribers: dict[str, set[asyncio.Queue]] = {}
        self._leaders: dict[str, _Leader] = {}
        self._sweeper: asyncio.Task | None = None
        self._trace_carriers: dict[str, dict[str, str]] = {}  # job id -> the submit's traceparent

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self.pool.start(self.settings.health_interval_s)
        for job in self.store.unfinished():  # a restart loses no job
            if not (self.job_dir(job.id) / "input.wav").exists():
                self.store.update(job.id, status="failed", error_code="input_lost", finished=time.time(),
                                  error="the gateway restarted and this job's input was lost; submit it again")
                continue
            self.store.update(job.id, status="queued")
            self.queue.put_nowait(job.user_id or "anonymous", job.id, force=True)
            log.info("re-queued job %s after restart", job.id)
        metrics.QUEUE.set(len(self.queue))
        self._workers = [asyncio.create_task(self._worker(), name=f"job-worker-{i}")
                         for i in range(self.settings.max_running_jobs)]
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="result-sweeper")
        await self.queue.notify()

    async def stop(self) -> None:
        tasks = [*self._workers, *self._running.values()] + ([self._sweeper] if self._sweeper else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.stop()
        await self.router.close()
        await self.cache.close()
        await self.notifier.drain()
        self.flags.close()
        self.store.close()

    # -- model choice --------------------------------------------------------------

    def resolve(self, name: str, user_id: str | None) -> Choice:
        """A model name or alias -> the model to run and the A/B arm."""
        if name in ("", "default"):
            choice = self.flags.choose_model(user_id)
        elif name in self.settings.aliases:
            choice = Choice(self.settings.aliases[name], EXPLICIT_ARM)
        else:
            choice = Choice(name, EXPLICIT_ARM)
        if choice.model not in self.pool.models():
            known = sorted(self.pool.models() | set(self.settings.aliases) | {"default"})
            raise BadRequest(f"unknown model {name!r}: use one of {known}")
        metrics.ARM_REQUESTS.labels(model=choice.model, arm=choice.arm).inc()
        return choice

    def fallback_for(self, user_id: str | None) -> str | None:
        return self.flags.fallback_model(user_id)

    # -- submit ----------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    async def submit(self, data: bytes, req: Request, *, batch_id: str | None = None,
                     reserve: bool = True) -> Job:
        """Validate and queue one upload (or answer it from the cache)."""
        if req.output_format not in ENCODINGS:
            raise BadRequest(f"output_format {req.output_format!r} is not supported: use one of {sorted(ENCODINGS)}")
        if req.idempotency_key:
            existing = self.store.by_idempotency(req.user_id, req.idempotency_key)
            if existing:
                return existing
        choice = self.resolve(req.model, req.user_id)
        if reserve and self.queue.room() < 1:
            metrics.REJECTED.labels(reason="queue_full").inc()
            raise Saturated(f"{len(self.queue)} jobs are waiting; try again shortly", retry_after=self._queue_wait())
        staging = self.data_dir / "staging" / f"{os.getpid()}-{id(req)}-{time.monotonic_ns()}.wav"
        with tracer.start_as_current_span("validate", attributes={"upload.bytes": len(data)}):
            try:
                intake = await asyncio.to_thread(take, data, staging, self.limits)
            except MusicsplitError as exc:
                metrics.REJECTED.labels(reason=exc.code).inc()
                raise
        version = self.pool.version(choice.model)
        try:
            job = self.store.create(model=choice.model, params=req.params(), user_id=req.user_id, arm=choice.arm,
                                    filename=req.filename, audio_sha=intake.sha256, batch_id=batch_id,
                                    idempotency_key=req.idempotency_key, model_version=version)
        except sqlite3.IntegrityError:  # the same idempotency key, submitted concurrently: one job
            intake.path.unlink(missing_ok=True)
            existing = self.store.by_idempotency(req.user_id, req.idempotency_key or "")
            if existing is None:
                raise
            return existing
        jdir = self.job_dir(job.id)
        jdir.mkdir(parents=True, exist_ok=True)
        os.replace(intake.path, jdir / "input.wav")
        self.store.update(job.id, result={"input_warnings": intake.warnings, "audio_seconds": round(intake.seconds, 3)})
        metrics.SEPARATIONS.labels(model=choice.model, model_version=version or "unknown").inc()
        if req.user_id and self.store.record_submission(req.user_id, intake.sha256, choice.model,
                                                        self.settings.reseparation_window_s):
            metrics.RESEPARATIONS.labels(model=choice.model, model_version=version or "unknown").inc()
        if await self._answer_from_cache(job):
            return self.store.get(job.id)
        self._trace_carriers[job.id] = inject({})
        try:
            self.queue.put_nowait(req.user_id or "anonymous", job.id, force=not reserve)
        except QueueFull:
            self._trace_carriers.pop(job.id, None)
            self.store.update(job.id, status="failed", error_code="saturated", finished=time.time(),
                              error="the queue filled up while this upload was checked; submit it again")
            raise Saturated("the job queue is full; try again shortly", retry_after=self._queue_wait()) from None
        metrics.QUEUE.set(len(self.queue))
        await self.queue.notify()
        return self.store.get(job.id)

    async def submit_batch(self, files: list[tuple[bytes, Request]], batch_id: str) -> list[Job | MusicsplitError]:
        """One job per file; the whole batch must fit the queue (all or nothing: 429)."""
        if self.queue.room() < len(files):
            metrics.REJECTED.labels(reason="queue_full").inc()
            raise Saturated(f"a batch of {len(files)} files does not fit the queue ({self.queue.room()} places free); "
                            "send fewer files or try again shortly", retry_after=self._queue_wait())
        out: list[Job | MusicsplitError] = []
        for data, req in files:
            try:
                out.append(await self.submit(data, req, batch_id=batch_id, reserve=False))
            except MusicsplitError as exc:
                out.append(exc)
        return out

    def _queue_wait(self) -> float:
        return max(1.0, min(60.0, 2.0 * (len(self.queue) / max(1, self.settings.max_running_jobs))))

    def _cache_key(self, job: Job, version: str | None) -> str | None:
        if not version or not job.audio_sha:
            return None
        return cache_key(job.audio_sha, job.model, version, job.params)

    async def _answer_from_cache(self, job: Job) -> bool:
        if not self.flags.enabled(CACHE_FLAG, job.user_id):
            return False
        version = self.pool.version(job.model)
        key = self._cache_key(job, version)
        if key is None:
            return False
        with tracer.start_as_current_span("cache.lookup", attributes={"cache.backend": self.cache.backend}) as span:
            hit = await self.cache.get(key, self.job_dir(job.id) / "stems")
            span.set_attribute("cache.hit", hit is not None)
        if hit is None:
            return False
        result = {**job.result, **hit.meta, "cached": True}
        ok = self.store.transition(job.id, ("queued", "running"), status="succeeded", result=result, cached=1,
                                   model_version=hit.meta.get("model_version"), finished=time.time(),
                                   started=time.time())
        self._finish_files(job.id)
        if ok:
            self._observe(self.store.get(job.id), "success", ab=False)  # milliseconds, not the arm's latency
            self._publish(job.id)
        return ok

    # -- running -----------------------------------------------------------------------

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
        if not self.store.transition(job_id, ("queued",), status="running", started=time.time()):
            return  # cancelled while queued
        job = self.store.get(job_id)
        self._publish(job_id)
        try:
            if await self._answer_from_cache(job):
                return
            key = self._cache_key(job, self.pool.version(job.model)) or f"{job.audio_sha}:{job.model}:{job.params}"
            while (leader := self._leaders.get(key)) is not None:
                # An identical job is running: wait for its result instead of computing twice.
                await asyncio.wait([leader.future])
                if not leader.future.cancelled() and leader.future.exception() is None:
                    outcome = leader.future.result()
                    files = self._link_files(outcome.files, self.job_dir(job_id) / "stems")
                    self._succeed(job, Outcome(files, {**outcome.result, "deduplicated_from": leader.job_id},
                                               outcome.version, outcome.model), ab=False)
                    return
                # The leader failed or was cancelled: this job tries on its own (or follows a new leader).
            fut = asyncio.get_running_loop().create_future()
            self._leaders[key] = _Leader(fut, job_id)
            try:
                outcome = await self._separate(job)
                ckey = self._cache_key(job, outcome.version)
                if (ckey and outcome.cacheable and outcome.model == job.model
                        and self.flags.enabled(CACHE_FLAG, job.user_id)):
                    with tracer.start_as_current_span("cache.store", attributes={"cache.backend": self.cache.backend}):
                        await self.cache.put(ckey, outcome.result, outcome.files)
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
            self._succeed(job, outcome)
        except asyncio.CancelledError:
            current = self.store.get(job_id)
            if current and current.status == "cancelled":
                self._finish_files(job_id, keep_results=False)
                self._observe(current, "cancelled")
                self._publish(job_id)
            raise  # shutdown: the row stays "running" and is re-queued at the next start
        except MusicsplitError as exc:
            self._fail(job, exc.code, exc.message)
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job_id)
            capture(exc, job_model=job.model)
            self._fail(job, "internal_error", f"the separation failed unexpectedly ({type(exc).__name__}); "
                                              "it has been reported, please try again")

    async def _separate(self, job: Job) -> Outcome:
        jdir = self.job_dir(job.id)
        info = sf.info(str(jdir / "input.wav"))
        total, rate = int(info.frames), int(info.samplerate)
        chunked = self.flags.enabled(CHUNKED_FLAG, job.user_id)
        forced_chunks = not chunked and total / rate > self.settings.max_audio_seconds_unchunked
        # One request for a track this long would go over the predictor's size and time limits.
        chunked = chunked or forced_chunks
        chunk_len = int(self.settings.chunk_seconds * rate) if chunked else total
        chunks = plan_chunks(total, chunk_len, int(self.settings.chunk_overlap_seconds * rate),
                             align=self.settings.chunk_align_samples or 1)
        self.store.update(job.id, chunks_total=len(chunks), chunks_done=0)
        self._publish(job.id)
        fallback = self.fallback_for(job.user_id)
        params = job.params
        fmt, subtype = ENCODINGS[params.get("output_format") or "wav"]
        ext = params.get("output_format") or "wav"
        out_dir = jdir / "stems"
        out_dir.mkdir(parents=True, exist_ok=True)
        assembler = Assembler(chunks)
        writers: dict[str, sf.SoundFile] = {}
        sem = asyncio.Semaphore(max(1, self.settings.chunk_concurrency))
        stats = {"quality": 0.0, "weight": 0.0, "compute": 0.0, "cost": 0.0, "warnings": [], "versions": set(),
                 "models": set(), "regions": set(), "peak_held": 0}

        async def one(chunk):
            async with sem:
                samples = await asyncio.to_thread(read_frames, jdir / "input.wav", chunk.start, chunk.end)
                with tracer.start_as_current_span("chunk", attributes={"chunk.index": chunk.index,
                                                                       "chunk.total": len(chunks)}):
                    for attempt in range(self.settings.chunk_retries + 1):
                        try:
                            routed = await self.router.separate(job.model, samples, rate, stems=params.get("stems"),
                                                                fallback=fallback, shifts=params.get("shifts"))
                            break
                        except UpstreamUnavailable as exc:
                            # Only this chunk waits and tries again; the chunks already done stay done.
                            metrics.CHUNKS.labels(model=job.model, outcome="retried").inc()
                            if attempt == self.settings.chunk_retries:
                                raise
                            await asyncio.sleep(min(exc.retry_after or 1.0, self.settings.chunk_retry_max_wait_s))
                del samples
                metrics.CHUNKS.labels(model=routed.model, outcome="success").inc()
                return chunk, routed

        def write(start: int, block: dict[str, np.ndarray]) -> None:
            for name, audio in block.items():
                if name not in writers:
                    writers[name] = sf.SoundFile(str(out_dir / f"{name}.{ext}"), "w", samplerate=rate,
                                                 channels=audio.shape[0], format=fmt, subtype=subtype)
                # Streamed block by block, so not musicsplit.audio.encode (whole files); same clip rule.
                data = audio.T
                if subtype.startswith("PCM"):
                    data = np.clip(data, -1.0, 1.0)
                writers[name].write(data)

        pending: set[asyncio.Task] = set()
        writing: asyncio.Future | None = None  # the block a worker thread is writing into `writers`
        next_chunk = 0
        done = 0
        try:
            while done < len(chunks):
                # Launch while the window has room: chunks held = launched - released.
                while next_chunk < len(chunks) and next_chunk - assembler.released < self.settings.chunk_window:
                    pending.add(asyncio.create_task(one(chunks[next_chunk])))
                    next_chunk += 1
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    chunk, routed = t.result()
                    sep = routed.value
                    p = sep.parameters or {}
                    n = chunk.end - chunk.start
                    if p.get("quality_score") is not None:
                        stats["quality"] += float(p["quality_score"]) * n
                        stats["weight"] += n
                    stats["compute"] += float(p.get("compute_seconds") or 0.0)
                    stats["cost"] += float(p.get("cost_usd") or 0.0)
                    # The predictor joins warnings with "; " (never inside one). Clipping is the whole
                    # input's, already in input_warnings; the rest once each, as the predictor wrote them.
                    for w in (w.strip() for w in str(p.get("warnings") or "").split("; ")):
                        if w and w not in stats["warnings"] and not w.startswith("clipping"):
                            stats["warnings"].append(w)
                    if p.get("model_version"):
                        stats["versions"].add(str(p["model_version"]))
                    stats["models"].add(routed.model)
                    stats["regions"].add(routed.endpoint.region)
                    stems = {k: np.asarray(v, dtype=np.float32) for k, v in sep.stems.items()}
                    if not stems or (params.get("stems") and set(stems) != set(params["stems"])):
                        raise UpstreamProtocolError(
                            f"predictor {routed.endpoint.url} answered chunk {chunk.index} with stems "
                            f"{sorted(stems)}, asked for {params.get('stems') or 'all'}")
                    released = assembler.add(chunk.index, stems)
                    stats["peak_held"] = max(stats["peak_held"], assembler.held)
                    for start, block in released:
                        # Shielded: a cancelled job must not close the files under a thread still writing.
                        writing = asyncio.ensure_future(asyncio.to_thread(write, start, block))
                        await asyncio.shield(writing)
                    done += 1
                    self.store.update(job.id, chunks_done=done)
                    self._publish(job.id)
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if writing is not None and not writing.done():
                await asyncio.wait([writing])  # libsndfile crashes on a file closed mid-write
            for w in writers.values():
                w.close()
        versions = sorted(stats["versions"], key=_version_key)
        version = "+".join(versions) if versions else None
        model = sorted(stats["models"])[0] if len(stats["models"]) == 1 else job.model
        warnings = list(job.result.get("input_warnings", [])) + stats["warnings"]
        if forced_chunks:
            warnings.append(f"chunked: {total / rate:.0f} s is over the {self.settings.max_audio_seconds_unchunked:.0f} s "
                            f"one request may carry, so it was separated in {len(chunks)} chunks")
        if len(versions) > 1:
            warnings.append(f"model versions: the chunks were separated by {', '.join(versions)} (a rollout was "
                            "under way); the result is not cached, submit again for a single version")
        if stats["models"] - {job.model}:
            warnings.append(f"fallback: separated by {sorted(stats['models'])} because {job.model} was unavailable")
        files = {name: out_dir / f"{name}.{ext}" for name in writers}
        result = {
            "stems": sorted(files),
            "sample_rate": rate,
            "audio_seconds": round(total / rate, 3),
            "compute_seconds": round(stats["compute"], 4),
            "cost_usd": stats["cost"],
            "quality_score": round(stats["quality"] / stats["weight"], 4) if stats["weight"] else None,
            "warnings": warnings,
            "model_version": version,
            "served_by": sorted(stats["models"]),
            "regions": sorted(stats["regions"]),
            "chunks": len(chunks),
            "peak_chunks_held": stats["peak_held"],
            "output_format": ext,
        }
        return Outcome(files, result, version, model, cacheable=len(versions) <= 1)

    def _link_files(self, files: dict[str, Path], dest: Path) -> dict[str, Path]:
        dest.mkdir(parents=True, exist_ok=True)
        out = {}
        for stem, path in files.items():
            target = dest / path.name
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
            out[stem] = target
        return out

    def _succeed(self, job: Job, outcome: Outcome, *, ab: bool = True) -> None:
        result = {**job.result, **outcome.result}
        result.pop("input_warnings", None)
        ok = self.store.transition(job.id, ("running",), status="succeeded", result=result, finished=time.time(),
                                   model_version=outcome.version, chunks_done=result.get("chunks", 0) or 0,
                                   chunks_total=result.get("chunks", 0) or 0)
        self._finish_files(job.id)
        if ok:
            self._observe(self.store.get(job.id), "success", ab=ab)
            self._publish(job.id)

    def _fail(self, job: Job, code: str, message: str) -> None:
        if self.store.transition(job.id, ("queued", "running"), status="failed", error_code=code, error=message,
                                 finished=time.time()):
            self._finish_files(job.id, keep_results=False)
            self._observe(self.store.get(job.id), "failure")
            self._publish(job.id)

    def _observe(self, job: Job, outcome: str, *, ab: bool = True) -> None:
        """Job metrics, and (ab) an A/B observation; a cache hit or a deduplicated job is counted,
        but its latency and quality are another job's work, so it is not an observation of the arm."""
        version = job.model_version or "unknown"
        arm = job.arm or EXPLICIT_ARM
        metrics.JOBS.labels(model=job.model, model_version=version, arm=arm, outcome=outcome).inc()
        if not ab:
            return
        latency = (job.finished or time.time()) - job.created
        quality = job.result.get("quality_score")
        if outcome == "success":
            metrics.JOB_SECONDS.labels(model=job.model, arm=arm).observe(latency)
            if quality is not None:
                metrics.QUALITY.labels(model=job.model, model_version=version, arm=arm).observe(quality)
        self.store.record_observation(arm, job.model, job.model_version, outcome, quality,
                                      latency if outcome == "success" else None)

    def _finish_files(self, job_id: str, keep_results: bool = True) -> None:
        jdir = self.job_dir(job_id)
        (jdir / "input.wav").unlink(missing_ok=True)
        if not keep_results:
            shutil.rmtree(jdir / "stems", ignore_errors=True)

    def _breaker_changed(self, state, old: str, new: str) -> None:
        key = f"breaker-open:{state.region}:{state.model}:{state.url}"
        if new == "closed":
            self.notifier.resolve(key, f"musicsplit gateway: circuit breaker closed again for {state.model} "
                                       f"in {state.region}")
        if new == "open":
            self.notifier.incident(
                key,
                f"musicsplit gateway: circuit breaker open for {state.model} in {state.region}",
                severity="error",
                details={"model": state.model, "region": state.region, "endpoint": state.url,
                         "last_error": state.last_error or "consecutive request failures"},
            )

    def _model_not_ready(self, state) -> None:
        self.notifier.incident(
            f"model-load-failed:{state.region}:{state.model}:{state.url}",
            f"musicsplit: model {state.model} failed to load in {state.region}",
            severity="critical",
            details={"model": state.model, "region": state.region, "endpoint": state.url,
                     "error": state.last_error},
        )

    # -- cancel, progress, results ---------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if job.terminal:
            return job
        if self.store.transition(job_id, ("queued", "running"), status="cancelled", finished=time.time(),
                                 error_code="cancelled", error="cancelled by the client"):
            if self.queue.remove(lambda i: i == job_id):
                metrics.QUEUE.set(len(self.queue))
                self._finish_files(job_id, keep_results=False)
                self._observe(self.store.get(job_id), "cancelled")
                self._publish(job_id)
            task = self._running.get(job_id)
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return self.store.get(job_id)

    def subscribe(self, job_id: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=1024)
        self._subscribers.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue) -> None:
        subs = self._subscribers.get(job_id)
        if subs:
            subs.discard(q)
            if not subs:
                self._subscribers.pop(job_id, None)

    def _publish(self, job_id: str) -> None:
        subs = self._subscribers.get(job_id)
        if not subs:
            return
        job = self.store.get(job_id)
        for q in list(subs):
            try:
                q.put_nowait(job)
            except asyncio.QueueFull:
                pass

    def zip_path(self, job: Job) -> Path:
        """The stems as one zip (stored, not deflated: audio does not compress), built once."""
        jdir = self.job_dir(job.id)
        path = jdir / "stems.zip"
        if not path.exists():
            tmp = jdir / f".stems.zip.{os.getpid()}"
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
                for name in job.result.get("stems", []):
                    ext = job.result.get("output_format", "wav")
                    z.write(jdir / "stems" / f"{name}.{ext}", arcname=f"{name}.{ext}")
            os.replace(tmp, path)
        return path

    # -- retention ---------------------------------------------------------------------

    def sweep(self) -> int:
        """Delete results older than the retention time; the job rows say 'expired'."""
        count = 0
        for job in self.store.expired(time.time() - self.settings.results_ttl_s):
            shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
            self.store.update(job.id, status="expired")
            count += 1
        for f in (self.data_dir / "staging").glob("*.wav") if (self.data_dir / "staging").exists() else []:
            if time.time() - f.stat().st_mtime > 3600:
                f.unlink(missing_ok=True)
        return count

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # pragma: no cover
                log.exception("result sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_s)

"""The separation service: what the HTTP routes call, and the parts it is made of.

  submit: the upload (body, or presigned upload: uploads.py) -> validate + store input
          (intake.py) -> flags choose model/arm -> cache hit? done in milliseconds :
          queue (shared by every replica, bounded; 429 beyond)
  then:   a runner (runner.py) of any replica claims it from the queue.

Every read that serves a user takes the caller's tenant: another tenant's
job is a 404, whatever its id. The parts, each behind a small interface
with an embedded default and a shared one for many replicas: job store and
queue (jobstore.py, jobqueue.py: SQLite or PostgreSQL), results (results.py:
local dir or S3), progress events (events.py: in-process or Redis).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from opentelemetry import trace
from starlette.requests import HTTPConnection

from musicsplit.audio import ENCODINGS
from musicsplit.errors import BadRequest, Conflict, MusicsplitError, NotFound, Saturated
from musicsplit.gateway import metrics
from musicsplit.gateway.tenancy.auth import Authenticator
from musicsplit.gateway.storage.cache import make_cache
from musicsplit.gateway.upstream.canaries import CanaryDirectory
from musicsplit.gateway.tenancy.callbacks import CallbackDeliverer, check_callback_url
from musicsplit.gateway.jobs.events import EventBus, make_event_bus
from musicsplit.gateway.experiments.flags import Choice, Flags
from musicsplit.gateway.upstream.health import Health
from musicsplit.gateway.api.ingress import UploadedFile
from musicsplit.gateway.jobs.intake import take, take_file
from musicsplit.gateway.jobs.jobqueue import JobQueue, SqlJobQueue
from musicsplit.gateway.storage.jobstore import (ActiveJobLimit, DuplicateIdempotencyKey, JobStore, SeparationJob, new_job_id,
                                         open_job_store)
from musicsplit.gateway.jobs.observations import EXPLICIT_ARM, Observations
from musicsplit.gateway.upstream.passthrough import PassThrough
from musicsplit.gateway.upstream.spooling import Slots
from musicsplit.gateway.tenancy.quotas import NO_QUOTA, Quotas, SocketSlots, UploadSlots
from musicsplit.gateway.upstream.regions import EndpointPool
from musicsplit.gateway.storage.result_store import make_result_store
from musicsplit.gateway.storage.results import Download, ResultStore
from musicsplit.gateway.jobs.runner import JobRunner
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.upstream.shadow import ShadowMirror
from musicsplit.gateway.tenancy.callers import Caller, ProgressTickets
from musicsplit.gateway.jobs.uploads import Uploads
from musicsplit.gateway.upstream.routing import Router

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")


@dataclass
class SeparationRequest:
    """What a caller asked for, validated."""

    model: str = "default"
    stems: list[str] | None = None
    output_format: str = "wav"
    shifts: int | None = None
    idempotency_key: str | None = None
    filename: str | None = None
    callback_url: str | None = None

    def params(self) -> dict:
        return {"stems": sorted(self.stems) if self.stems else None, "output_format": self.output_format,
                "shifts": self.shifts}


def replica_id() -> str:
    """This process, as the owner of the leases it takes (unique even for several on one host)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SeparationService:
    """Built unstarted; `start()` opens the job store and starts the runner and background loops."""

    def __init__(self, settings: GatewaySettings, *, flags: Flags | None = None, auth: Authenticator | None = None):
        self.settings = settings
        self.limits = settings.limits()
        self.auth = auth or Authenticator(settings)
        self.v2_slots = Slots(settings.v2_max_concurrent)
        self.upload_slots = UploadSlots(settings.max_uploads_per_tenant)
        self.socket_slots = SocketSlots(settings.max_progress_sockets_per_tenant, settings.max_progress_sockets_per_job)
        self.pool = EndpointPool(settings.endpoints, settings.region_order, failures=settings.breaker_failures,
                                 reset_s=settings.breaker_reset_s)
        self.router = Router(settings, self.pool)
        self.flags = flags or Flags(settings)
        self.cache = make_cache(settings)
        self.replica = replica_id()
        self.results: ResultStore = make_result_store(settings)
        self.uploads = Uploads(self.results, settings.max_upload_bytes)
        self.events: EventBus = make_event_bus(settings, self.replica)
        # The SeparationModels' status: canaries for shadow traffic, per-version URLs for pinning.
        self.directory = (CanaryDirectory(settings.shadow_namespace, settings.shadow_refresh_s,
                                          settings.shadow_kubeconfig)
                          if settings.shadow_enabled or settings.pin_versions else None)
        self.shadow = ShadowMirror(settings, directory=self.directory)
        if self.directory is not None and settings.pin_versions:
            self.pool.version_url = self.directory.version_url
        self.store: JobStore
        self.queue: JobQueue
        self.observations: Observations
        self.runner: JobRunner
        self.health: Health
        self.quotas: Quotas
        self.callbacks: CallbackDeliverer
        self.tickets: ProgressTickets
        self.passthrough: PassThrough  # the v2 pass-through (upstream/passthrough.py)
        self._sweeper: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.store = await open_job_store(self.settings)
        queue = SqlJobQueue(self.store.engine)
        self.queue = queue
        engine = self.store.engine  # quotas, callbacks and tickets keep their rows in the job store's database
        # An open gateway (the local demo) has no quota; a tenant the file does not list has the default.
        self.quotas = Quotas(engine, self.auth.tenants, NO_QUOTA if self.auth.open else self.settings.default_quota)
        self.callbacks = CallbackDeliverer(engine, self.auth.tenants, self.settings)
        self.tickets = ProgressTickets(engine, self.settings.progress_ticket_ttl_s)
        self.observations = Observations(self.store, self.settings.reseparation_window_s,
                                         on_finished=lambda job: self.callbacks.wake())
        self.runner = JobRunner(self.settings, store=self.store, queue=self.queue, results=self.results,
                                events=self.events, router=self.router, pool=self.pool, flags=self.flags,
                                cache=self.cache, observations=self.observations, replica=self.replica,
                                shadow=self.shadow)
        self.passthrough = PassThrough(self.settings, self.router, self.quotas, self.observations, self.shadow,
                                       self.flags, self.resolve, slots=self.v2_slots, uploads=self.upload_slots)
        self.health = Health(self)
        await self.events.start()
        self.pool.start(self.settings.health_interval_s)
        await self.shadow.start(self.pool.models())
        if self.directory is not None:
            self.directory.start()
        await self.runner.start(sole_replica=queue.dialect == "sqlite")
        self.callbacks.start()
        self.health.start(self.settings.health_interval_s)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="result-sweeper")
        log.info("gateway replica %s: job store %s, result store %s, events %s", self.replica, queue.dialect,
                 self.results.backend, self.events.backend)

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.health.stop()
        await self.runner.stop()
        await self.callbacks.stop()
        await self.shadow.stop()
        if self.directory is not None:
            await self.directory.stop()
        await self.pool.stop()
        await self.router.close()
        await self.cache.close()
        await self.events.close()
        self.flags.close()
        await self.store.close()

    # -- model choice --------------------------------------------------------------------

    def resolve(self, name: str, caller: Caller) -> Choice:
        """A model name or alias -> the model to run and the A/B arm."""
        if name in ("", "default"):
            choice = self.flags.choose_model(caller.flag_user)
        elif name in self.settings.aliases:
            choice = Choice(self.settings.aliases[name], EXPLICIT_ARM)
        else:
            choice = Choice(name, EXPLICIT_ARM)
        if choice.model not in self.pool.models():
            known = sorted(self.pool.models() | set(self.settings.aliases) | {"default"})
            raise BadRequest(f"unknown model {name!r}: use one of {known}")
        self.observations.assigned(choice)
        return choice

    def _check_stems(self, model: str, stems: list[str] | None) -> None:
        """Refuse stems the model does not produce before the upload is taken (and counted)."""
        known = self.pool.stems(model)
        if not stems or known is None:
            return  # all stems, or the model's not known yet: the predictor checks
        unknown = sorted(set(stems) - known)
        if unknown:
            raise BadRequest(f"model {model} has no stem {', '.join(map(repr, unknown))}: ask for one or more "
                             f"of {sorted(known)} (comma-separated), or leave stems out for all of them")

    # -- submit ----------------------------------------------------------------------------

    async def admit(self, caller: Caller, *, files: int = 1, idempotency_key: str | None = None) -> None:
        """Refuse an upload before its body is read: the shared queue full, or the tenant's active jobs
        or today's audio minutes used up (429 either way). An idempotent retry is let through: it may
        name a job that exists."""
        room = self.settings.max_queued_jobs - await self.queue.queued()
        if room < files:
            raise self._queue_full(files, room)
        await self.quotas.audio_left(caller.tenant)
        limit = self.quotas.max_active(caller.tenant)
        if limit is not None and not idempotency_key:
            active = await self.store.count_active(caller.tenant)
            if active + files > limit:
                raise self.quotas.active_refused(caller.tenant, active, files)

    async def submit(self, upload: UploadedFile | None, req: SeparationRequest, caller: Caller, *,
                     upload_id: str | None = None, batch_id: str | None = None,
                     reserve: bool = True) -> SeparationJob:
        """Validate and queue one upload, from a staged request body (`upload`, left for the caller to
        delete) or a presigned upload of the caller's tenant (`upload_id`), or answer it from the cache.
        reserve: check the shared queue has room (a batch checks for all its files at once)."""
        if req.output_format not in ENCODINGS:
            raise BadRequest(f"output_format {req.output_format!r} is not supported: use one of {sorted(ENCODINGS)}")
        if req.callback_url:
            check_callback_url(req.callback_url, self.auth.tenant(caller.tenant), caller.tenant,
                               allow_private=self.settings.callback_allow_private)
        store = self.store
        if req.idempotency_key:
            existing = await store.by_idempotency(caller.tenant, caller.user_id, req.idempotency_key)
            if existing:
                return existing
        choice = self.resolve(req.model, caller)
        self._check_stems(choice.model, req.stems)
        if reserve and await self.queue.queued() >= self.settings.max_queued_jobs:
            raise self._queue_full(1)
        intake = await self._intake(upload, upload_id, caller)
        try:
            await self.quotas.take_audio(caller.tenant, intake.seconds)
        except MusicsplitError:
            intake.path.unlink(missing_ok=True)
            raise
        # The input is stored before the job exists: no replica can claim a job without its input.
        job_id = new_job_id()
        params = req.params()
        draft = SeparationJob(id=job_id, status="queued", model=choice.model, params=params, tenant=caller.tenant)
        try:
            await self.results.put_input(draft, intake.path)
            job = await store.create(tenant=caller.tenant, model=choice.model, params=params,
                                     user_id=caller.user_id, arm=choice.arm, filename=req.filename,
                                     audio_sha=intake.sha256, batch_id=batch_id,
                                     idempotency_key=req.idempotency_key, model_version=self.pool.version(choice.model),
                                     job_id=job_id, result={"input_warnings": intake.warnings,
                                                            "audio_seconds": round(intake.seconds, 3)},
                                     max_active=self.quotas.max_active(caller.tenant),
                                     callback_url=req.callback_url)
        except (DuplicateIdempotencyKey, ActiveJobLimit) as exc:
            await self.results.delete(draft)
            await self.quotas.give_back_audio(caller.tenant, intake.seconds)
            if isinstance(exc, ActiveJobLimit):
                raise self.quotas.active_refused(caller.tenant, exc.active) from None
            # The same key, submitted concurrently: one job.
            existing = await store.by_idempotency(caller.tenant, caller.user_id, req.idempotency_key or "")
            if existing is None:
                raise
            return existing
        except BaseException:
            intake.path.unlink(missing_ok=True)
            await asyncio.shield(self._undo_submit(draft, caller.tenant, intake.seconds))
            raise
        if upload_id:  # used: its job keeps the validated input (a leftover goes with the uploads sweep)
            try:
                await self.uploads.delete(caller.tenant, upload_id)
            except Exception as exc:
                log.warning("could not delete used upload %s (%s)", upload_id, exc)
        await self.observations.submitted(job)
        if not await self.runner.answer_from_cache(job):
            await self.runner.enqueue(job)
        return await store.get(job.id, tenant=caller.tenant) or job

    async def _undo_submit(self, draft: SeparationJob, tenant: str, seconds: float) -> None:
        await self.results.delete(draft)
        await self.quotas.give_back_audio(tenant, seconds)

    async def _intake(self, upload: UploadedFile | None, upload_id: str | None, caller: Caller):
        """The audio validated into a local staging file (intake.Intake)."""
        staging = self.results.staging_path()
        if upload_id is not None:
            raw = staging.with_suffix(".upload")
            try:
                size = await self.uploads.fetch(caller.tenant, upload_id, raw)
                # Bounded by max_upload_bytes (checked by HEAD in fetch), not by the request body limit.
                limits = dataclasses.replace(self.limits, max_bytes=self.settings.max_upload_bytes)
                with tracer.start_as_current_span("validate", attributes={"upload.bytes": size}):
                    return await asyncio.to_thread(take_file, raw, staging, limits)
            except MusicsplitError as exc:
                metrics.REJECTED.labels(reason=exc.code).inc()
                raise
            finally:
                raw.unlink(missing_ok=True)
        if upload is None:
            raise BadRequest("send the audio as a multipart/form-data field named 'file', or an upload_id "
                             "from POST /v1/uploads")
        with tracer.start_as_current_span("validate", attributes={"upload.bytes": upload.size}):
            try:
                return await asyncio.to_thread(take, upload.path, upload.sha256, staging, self.limits)
            except MusicsplitError as exc:
                metrics.REJECTED.labels(reason=exc.code).inc()
                raise

    async def submit_batch(self, files: list[tuple[UploadedFile, SeparationRequest]], caller: Caller,
                           batch_id: str) -> list[SeparationJob | MusicsplitError]:
        """One job per file; the whole batch must fit the shared queue and the tenant's concurrent-jobs
        quota (all or nothing: 429)."""
        await self.admit(caller, files=len(files))
        out: list[SeparationJob | MusicsplitError] = []
        for upload, req in files:
            try:
                out.append(await self.submit(upload, req, caller, batch_id=batch_id, reserve=False))
            except MusicsplitError as exc:
                out.append(exc)
        return out

    def _queue_full(self, wanted: int, room: int = 0) -> Saturated:
        metrics.REJECTED.labels(reason="queue_full").inc()
        wait = max(1.0, min(60.0, 2.0 * self.settings.max_queued_jobs / max(1, self.settings.max_running_jobs)))
        if wanted == 1:
            return Saturated(f"{self.settings.max_queued_jobs} jobs are waiting; try again shortly", retry_after=wait)
        return Saturated(f"a batch of {wanted} files does not fit the queue ({max(0, room)} places free); "
                         "send fewer files or try again shortly", retry_after=wait)

    # -- a caller's jobs -------------------------------------------------------------------

    async def job(self, caller: Caller, job_id: str) -> SeparationJob:
        job = await self.store.get(job_id, tenant=caller.tenant)
        if job is None:
            raise NotFound(f"no separation job {job_id}; it may have been mistyped (ids are 32 hex characters)")
        return job

    async def batch(self, caller: Caller, batch_id: str) -> list[SeparationJob]:
        return await self.store.batch(caller.tenant, batch_id)

    async def jobs(self, caller: Caller, *, status: str | None, user_id: str | None, limit: int,
                   after: tuple[float, str] | None) -> list[SeparationJob]:
        """A page of the tenant's jobs, newest first."""
        return await self.store.list_jobs(caller.tenant, status=status, user_id=user_id, limit=limit, after=after)

    async def progress_ticket(self, caller: Caller, job_id: str) -> tuple[str, float]:
        """A one-time ticket for the job's progress WebSocket (browsers cannot send Authorization there)."""
        job = await self.job(caller, job_id)
        return await self.tickets.issue(caller.tenant, job.id)

    async def cancel(self, caller: Caller, job_id: str) -> SeparationJob:
        return await self.runner.cancel(await self.job(caller, job_id))

    async def result_job(self, caller: Caller, job_id: str) -> SeparationJob:
        """The job, if its stems can be downloaded (404 / 409 saying why not)."""
        job = await self.job(caller, job_id)
        if job.status == "expired":
            raise NotFound(f"the results of job {job_id} were deleted after the retention time; submit it again")
        if job.status != "succeeded":
            raise Conflict(f"job {job_id} is {job.status} ({job.chunks_done}/{job.chunks_total} chunks); "
                           "stems exist once it has succeeded")
        return job

    async def stem(self, job: SeparationJob, stem: str) -> Download:
        stems = job.result.get("stems", [])
        if stem not in stems:
            raise NotFound(f"job {job.id} has no stem {stem!r}; it has {stems}")
        return await self.results.stem(job, stem, job.result.get("output_format", "wav"))

    async def zip(self, job: SeparationJob) -> Download:
        return await self.results.zip(job, job.result.get("stems", []), job.result.get("output_format", "wav"))

    # -- retention -------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete results older than the retention time; the job rows say 'expired'."""
        count = 0
        for job in await self.store.expired(time.time() - self.settings.results_ttl_s):
            await self.results.delete(job)
            await self.queue.forget(job.id)
            await self.runner.publish(await self.store.update(job.id, status="expired"))
            count += 1
        await self.results.sweep_staging(3600.0)
        await self.uploads.sweep(self.settings.uploads_ttl_s)
        await self.quotas.prune()
        await self.tickets.prune()
        return count

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # pragma: no cover
                log.exception("result sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_s)


def service_of(connection: HTTPConnection) -> SeparationService:
    """FastAPI dependency: the app's service."""
    return connection.app.state.service

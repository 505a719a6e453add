"""What finished work tells us: job and v2 metrics, A/B observations, re-separations.

A cache hit or a deduplicated job is counted as a job, but its latency and
quality are another job's work, so it is no observation of its A/B arm; bad
input says nothing about an arm either. Re-separation (the same user sending
the same audio again within a window) is the dissatisfaction proxy.
"""

from __future__ import annotations

import time
from typing import Callable

from musicsplit.gateway import metrics
from musicsplit.gateway.experiments.flags import Choice
from musicsplit.gateway.storage.jobstore import JobStore, SeparationJob

EXPLICIT_ARM = "explicit"  # the caller named a model: no A/B assignment


class Observations:
    def __init__(self, store: JobStore, reseparation_window_s: float,
                 on_finished: Callable[[SeparationJob], None] | None = None):
        self.store = store
        self.window_s = reseparation_window_s
        self.on_finished = on_finished  # every terminal job, once (the callbacks wake on it)

    def assigned(self, choice: Choice) -> None:
        metrics.ARM_REQUESTS.labels(model=choice.model, arm=choice.arm).inc()

    async def submitted(self, job: SeparationJob) -> None:
        version = job.model_version or "unknown"
        metrics.SEPARATIONS.labels(model=job.model, model_version=version).inc()
        metrics.TENANT_AUDIO.labels(tenant=job.tenant).inc(job.result.get("audio_seconds") or 0.0)
        if job.user_id and job.audio_sha and await self.store.record_submission(
                job.tenant, job.user_id, job.audio_sha, job.model, self.window_s):
            metrics.RESEPARATIONS.labels(model=job.model, model_version=version).inc()

    async def job_finished(self, job: SeparationJob, outcome: str, *, ab: bool = True) -> None:
        """Job metrics, and (ab) an A/B observation of the job's arm."""
        version = job.model_version or "unknown"
        arm = job.arm or EXPLICIT_ARM
        metrics.JOBS.labels(model=job.model, model_version=version, arm=arm, outcome=outcome).inc()
        metrics.TENANT_JOBS.labels(tenant=job.tenant, outcome=outcome).inc()
        if self.on_finished is not None:
            self.on_finished(job)
        if not ab:
            return
        latency = (job.finished or time.time()) - job.created
        quality = job.result.get("quality_score")
        if outcome == "success":
            metrics.JOB_SECONDS.labels(model=job.model, arm=arm).observe(latency)
            if quality is not None:
                metrics.QUALITY.labels(model=job.model, model_version=version, arm=arm).observe(quality)
        await self.store.record_observation(arm, job.model, job.model_version, outcome, quality,
                                            latency if outcome == "success" else None)

    async def v2_failed(self, choice: Choice, *, bad_input: bool) -> None:
        metrics.V2_REQUESTS.labels(model=choice.model, model_version="unknown", arm=choice.arm,
                                   outcome="bad_input" if bad_input else "failure").inc()
        if not bad_input:
            await self.store.record_observation(choice.arm, choice.model, None, "failure", None, None)

    async def v2_succeeded(self, choice: Choice, model: str, version: str, quality: float | None,
                           latency: float, *, tenant: str, audio_seconds: float | None) -> None:
        metrics.TENANT_AUDIO.labels(tenant=tenant).inc(audio_seconds or 0.0)
        metrics.V2_REQUESTS.labels(model=model, model_version=version, arm=choice.arm, outcome="success").inc()
        metrics.V2_SECONDS.labels(model=model, arm=choice.arm).observe(latency)
        if quality is not None:
            metrics.QUALITY.labels(model=model, model_version=version, arm=choice.arm).observe(float(quality))
        await self.store.record_observation(choice.arm, model, version, "success", quality, latency)

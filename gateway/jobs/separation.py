"""Separating one job's stored input: plan the chunks, route them, assemble, write the stems.

Chunks go to predictors `chunk_concurrency` at a time, at most `chunk_window`
held in memory; the Assembler cross-fades them and releases audio front to
back, straight into the stem files. A job taken over from a replica that
died resumes from its checkpointed chunks (ChunkedSeparation).

A job is one model and one version end to end. The first chunk answered
pins the model and version that served it (the fallback model, when the
chosen one was down from the start); every other chunk must be served by
the same: the router prefers endpoints of the pinned version, a chunk
answered by another version is sent again, and when none serves the pinned
model and version the job fails (`model_changed`, or `upstream_unavailable`),
never mixing stems of two models or versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from musicsplit.errors import ModelChanged, UpstreamUnavailable
from musicsplit.gateway import metrics
from musicsplit.gateway.jobs.chunking import Assembler, Chunk, max_request_frames, plan_chunks
from musicsplit.gateway.jobs.jobqueue import ChunkPlan, JobLease
from musicsplit.gateway.storage.jobstore import SeparationJob
from musicsplit.gateway.storage.results import InputInfo, ResultMissing, ResultStore
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.upstream.shadow import ShadowMirror
from musicsplit.gateway.upstream.routing import Routed, Router

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")


class UpstreamProtocolError(RuntimeError):
    """A predictor answered 200 with something that is not a separation (a bug to report)."""


@dataclass(frozen=True)
class Pin:
    """The model and version a job is separated by, from its first answered chunk."""

    model: str
    version: str | None


@dataclass
class Outcome:
    job_id: str  # whose stem files these are (a deduplicated job copies another job's)
    stems: list[str]
    result: dict
    version: str | None
    model: str


@dataclass
class Plan:
    chunks: list[Chunk]
    forced: str | None  # why a track was chunked although the chunked-jobs flag is off


def plan(settings: GatewaySettings, info: InputInfo, chunked: bool) -> Plan:
    """Chunks for a track; one chunk when it fits a single request and chunking is off.

    One request must stay under the predictor's byte limit (fp32 samples: a 48 kHz stereo
    track reaches 200 MiB at ~546 s) and under `max_audio_seconds_unchunked` (Knative's cap);
    no chunk is longer than one request may be, whatever `chunk_seconds` says.
    """
    rate = info.sample_rate
    by_bytes = max_request_frames(settings.predictor_max_request_bytes, info.channels)
    one_request = min(by_bytes, int(settings.max_audio_seconds_unchunked * rate))
    forced = not chunked and info.frames > one_request
    length = min(int(settings.chunk_seconds * rate), one_request) if chunked or forced else info.frames
    chunks = plan_chunks(info.frames, length, int(settings.chunk_overlap_seconds * rate),
                         align=settings.chunk_align_samples or 1)
    if not forced:
        return Plan(chunks, None)
    return Plan(chunks, f"chunked: {info.frames / rate:.0f} s ({4 * info.channels * info.frames / 1e6:.0f} MB as "
                        f"one request) is over what one request to a predictor may carry ({one_request / rate:.0f} s "
                        f"here), so it was separated in {len(chunks)} chunks")


class BusyClock:
    """The wall time during which at least one of a job's chunks waited for a busy (429) predictor:
    the job's saturation wait, bounded as a whole (chunks waiting together count once)."""

    def __init__(self):
        self._total = 0.0
        self._waiting = 0
        self._since = 0.0

    def elapsed(self) -> float:
        return self._total + (time.monotonic() - self._since if self._waiting else 0.0)

    @contextlib.asynccontextmanager
    async def waiting(self):
        if not self._waiting:
            self._since = time.monotonic()
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._total += time.monotonic() - self._since


@dataclass
class _Totals:
    quality: float = 0.0
    weight: float = 0.0
    compute: float = 0.0
    cost: float = 0.0
    warnings: list[str] = field(default_factory=list)
    regions: set[str] = field(default_factory=set)
    peak_held: int = 0

    def add(self, chunk: Chunk, meta: dict) -> None:
        n = chunk.end - chunk.start
        if meta.get("quality_score") is not None:
            self.quality += float(meta["quality_score"]) * n
            self.weight += n
        self.compute += float(meta.get("compute_seconds") or 0.0)
        self.cost += float(meta.get("cost_usd") or 0.0)
        # The predictor joins warnings with "; " (never inside one). Clipping is the whole
        # input's, already in input_warnings; the rest once each, as the predictor wrote them.
        for w in (w.strip() for w in str(meta.get("warnings") or "").split("; ")):
            if w and w not in self.warnings and not w.startswith("clipping"):
                self.warnings.append(w)
        self.regions.add(meta["region"])


def _served(routed: Routed) -> Pin:
    version = (routed.value.parameters or {}).get("model_version")
    return Pin(routed.model, str(version) if version else None)


def _meta(routed: Routed) -> dict:
    """What the job's result needs from one chunk's answer (kept with its checkpoint)."""
    p = routed.value.parameters or {}
    pin = _served(routed)
    return {"model": pin.model, "model_version": pin.version, "region": routed.endpoint.region,
            "quality_score": p.get("quality_score"), "compute_seconds": p.get("compute_seconds"),
            "cost_usd": p.get("cost_usd"), "warnings": p.get("warnings")}


class ChunkedSeparation:
    """One run of one job by the replica holding its lease; `run()` returns the Outcome once the
    stems are written.

    The chunk plan is the job's, made by its first run and followed by every later one. With more
    than one chunk, each finished chunk is kept (result store) and recorded (job queue) before it
    counts as done, so a run that takes the job over reloads those chunks instead of separating
    them again: progress resumes where it was, and the stems equal an uninterrupted run's.
    """

    def __init__(self, job: SeparationJob, *, settings: GatewaySettings, router: Router, results: ResultStore,
                 lease: JobLease, chunked: bool, fallback: str | None, mirror: ShadowMirror | None = None):
        self.job = job
        self.settings = settings
        self.router = router
        self.results = results
        self.lease = lease
        self.chunked = chunked
        self.fallback = fallback
        self.mirror = mirror  # shadow traffic: each chunk a user gets may be compared with a canary's
        self.pin: Pin | None = None
        self.stem_names: set[str] | None = None
        self.finished: set[int] = set()  # chunks kept and recorded (checkpointed)
        self.resumed = 0  # chunks a takeover reloaded instead of separating
        self.busy = BusyClock()
        self._pinning = asyncio.Lock()  # held by the chunk whose answer will pin the job

    async def _plan(self, info: InputInfo) -> tuple[list[Chunk], str | None]:
        stored = await self.lease.plan()
        if stored is None:
            made = plan(self.settings, info, self.chunked)
            stored = ChunkPlan([(c.start, c.end) for c in made.chunks], made.forced)
            await self.lease.save_plan(stored)
        return [Chunk(i, start, end) for i, (start, end) in enumerate(stored.chunks)], stored.forced

    async def run(self) -> Outcome:
        job, settings = self.job, self.settings
        info = await self.results.input_info(job)
        chunks, forced = await self._plan(info)
        checkpointing = len(chunks) > 1  # one chunk: nothing to resume from
        done_before = await self.lease.checkpoints() if checkpointing else {}
        if done_before:
            first = next(iter(done_before.values()))
            self.pin = Pin(first["model"], first.get("model_version"))
            self.finished = set(done_before)
            self.resumed = len(done_before)
            log.info("job %s resumes from %d of %d chunks checkpointed", job.id, self.resumed, len(chunks))
        await self.lease.progress(len(self.finished), len(chunks))
        output_format = job.params.get("output_format") or "wav"
        writer = self.results.stem_writer(job, output_format, info.sample_rate)
        assembler = Assembler(chunks)
        sem = asyncio.Semaphore(max(1, settings.chunk_concurrency))
        totals = _Totals()
        pending: set[asyncio.Task] = set()
        writing: asyncio.Future | None = None  # the block a worker thread is writing
        committed = False
        next_chunk = done = 0
        try:
            while done < len(chunks):
                # Launch while the window has room: chunks held = launched - released.
                while next_chunk < len(chunks) and next_chunk - assembler.released < settings.chunk_window:
                    chunk = chunks[next_chunk]
                    work = (self._reload(chunk, done_before[chunk.index]) if chunk.index in done_before
                            else self._one(chunk, len(chunks), info, sem, checkpointing))
                    pending.add(asyncio.create_task(work))
                    next_chunk += 1
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    chunk, stems, meta = t.result()
                    totals.add(chunk, meta)
                    released = assembler.add(chunk.index, stems)
                    totals.peak_held = max(totals.peak_held, assembler.held)
                    for _start, block in released:
                        # Shielded: a cancelled job must not close the files under a thread still writing.
                        writing = asyncio.ensure_future(asyncio.to_thread(self._write, writer, block))
                        await asyncio.shield(writing)
                    done += 1
                    if not checkpointing:
                        await self.lease.progress(done, len(chunks))
            # Still the job's holder, right before its stems appear (LeaseLost otherwise).
            await self.lease.progress(len(chunks), len(chunks))
            stem_names = await asyncio.to_thread(writer.commit)
            committed = True
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if writing is not None and not writing.done():
                await asyncio.wait([writing])  # libsndfile crashes on a file closed mid-write
            if not committed:
                writer.abort()
        return self._outcome(chunks, forced, info, stem_names, totals, output_format)

    @staticmethod
    def _write(writer, block: dict[str, np.ndarray]) -> None:
        for name, audio in block.items():
            writer.write(name, audio)

    async def _reload(self, chunk: Chunk, meta: dict) -> tuple[Chunk, dict[str, np.ndarray], dict]:
        stems = await self.results.get_chunk(self.job, chunk.index)
        if stems is None:
            raise ResultMissing(f"job {self.job.id}: chunk {chunk.index} is recorded as done but its stems are gone")
        self._check_stems(chunk, f"the checkpoint of chunk {chunk.index}", stems)
        return chunk, stems, meta

    async def _one(self, chunk: Chunk, total: int, info: InputInfo, sem: asyncio.Semaphore,
                   checkpointing: bool) -> tuple[Chunk, dict[str, np.ndarray], dict]:
        settings, params = self.settings, self.job.params
        async with sem:
            samples = await self.results.read_input(self.job, chunk.start, chunk.end)
            with tracer.start_as_current_span("chunk", attributes={"chunk.index": chunk.index,
                                                                   "chunk.total": total}):
                outages = mismatches = 0
                while True:
                    try:
                        # Until the first answer pins the job, one chunk at a time: the others then
                        # go to the pinned version (its own URL, where published) instead of meeting
                        # the other side of a canary split.
                        routed = None
                        if self.pin is None:
                            async with self._pinning:
                                if self.pin is None:  # still: this chunk's answer pins the job
                                    routed = await self._route(samples, info.sample_rate)
                                    self.pin = _served(routed)
                        if routed is None:
                            routed = await self._route(samples, info.sample_rate)
                    except UpstreamUnavailable as exc:
                        # Only this chunk waits and tries again; the chunks already done stay done.
                        metrics.CHUNKS.labels(model=self.job.model, outcome="retried").inc()
                        # Alive but busy: wait for a place, bounded in time (the job's, whatever else
                        # fails meanwhile), not in tries; anything else counts as an outage of this chunk.
                        outages += not exc.saturated
                        if exc.saturated and self.busy.elapsed() > settings.chunk_saturated_wait_s:
                            raise UpstreamUnavailable(
                                f"every predictor of model {self.job.model} stayed busy for "
                                f"{self.busy.elapsed():.0f} s while this job waited for a place; submit it again "
                                "later", retry_after=exc.retry_after, saturated=True) from None
                        if outages > settings.chunk_retries:
                            if self.pin is not None:
                                raise UpstreamUnavailable(
                                    f"model {self.pin.model} ({self.pin.version or 'unknown version'}), which "
                                    "separated this job's first chunks, is not answering; a job is never "
                                    "finished by another model or version: submit it again later",
                                    retry_after=exc.retry_after) from None
                            raise
                        pause = min(exc.retry_after or 1.0, settings.chunk_retry_max_wait_s)
                        if exc.saturated:
                            async with self.busy.waiting():
                                await asyncio.sleep(pause)
                        else:
                            await asyncio.sleep(pause)
                        continue
                    served = _served(routed)
                    if served == self.pin:
                        break
                    # Another version (a rollout under way) or, for a chunk sent before the pin,
                    # another model: sent again, to the pinned model, its version's endpoints first.
                    metrics.CHUNKS.labels(model=self.job.model, outcome="version_mismatch").inc()
                    mismatches += 1
                    if mismatches > settings.chunk_version_retries:
                        raise ModelChanged(
                            f"the model changed while this job ran: its first chunks were separated by "
                            f"{self.pin.model} {self.pin.version}, a later one only by {served.model} "
                            f"{served.version}; a job is one model version end to end: submit it again")
        metrics.CHUNKS.labels(model=routed.model, outcome="success").inc()
        if self.mirror is not None:
            self.mirror.offer_chunk(routed.model, served.version, samples, info.sample_rate, routed.value.stems,
                                    stem_names=params.get("stems"), shifts=params.get("shifts"))
        stems = {k: np.asarray(v, dtype=np.float32) for k, v in routed.value.stems.items()}
        self._check_stems(chunk, f"predictor {routed.endpoint.url}", stems)
        meta = _meta(routed)
        if checkpointing:
            await self.results.put_chunk(self.job, chunk.index, stems)
            self.finished.add(chunk.index)
            await self.lease.checkpoint(chunk.index, meta, len(self.finished), total)
        return chunk, stems, meta

    async def _route(self, samples: np.ndarray, sample_rate: int) -> Routed:
        """One chunk to the pinned model and version (their own URL first), or, before the pin, to
        the job's model (its fallback allowed)."""
        pin, params = self.pin, self.job.params
        return await self.router.separate(
            pin.model if pin else self.job.model, samples, sample_rate, stems=params.get("stems"),
            shifts=params.get("shifts"), fallback=None if pin else self.fallback,
            version=pin.version if pin else None)

    def _check_stems(self, chunk: Chunk, source: str, stems: dict[str, np.ndarray]) -> None:
        wanted = self.job.params.get("stems")
        if not stems or (wanted and set(stems) != set(wanted)) or (
                self.stem_names is not None and set(stems) != self.stem_names):
            raise UpstreamProtocolError(
                f"{source} answered chunk {chunk.index} with stems {sorted(stems)}, "
                f"expected {sorted(wanted or self.stem_names or []) or 'some'}")
        self.stem_names = set(stems)

    def _outcome(self, chunks: list[Chunk], forced: str | None, info: InputInfo, stem_names: list[str],
                 totals: _Totals, output_format: str) -> Outcome:
        job, pin = self.job, self.pin
        warnings = list(job.result.get("input_warnings", [])) + totals.warnings
        if forced:
            warnings.append(forced)
        model = pin.model if pin else job.model
        if model != job.model:
            warnings.append(f"fallback: separated by {model} because {job.model} was unavailable")
        rate = info.sample_rate
        result = {
            "stems": stem_names,
            "sample_rate": rate,
            "audio_seconds": round(info.frames / rate, 3),
            "compute_seconds": round(totals.compute, 4),
            "cost_usd": totals.cost,
            "quality_score": round(totals.quality / totals.weight, 4) if totals.weight else None,
            "warnings": warnings,
            "model_version": pin.version if pin else None,
            "served_by": [model],
            "regions": sorted(totals.regions),
            "chunks": len(chunks),
            "chunks_resumed": self.resumed,
            "peak_chunks_held": totals.peak_held,
            "output_format": output_format,
        }
        return Outcome(job.id, stem_names, result, pin.version if pin else None, model)

"""Separating one job's stored input: plan the chunks, route them, assemble, write the stems.

Chunks go to predictors `chunk_concurrency` at a time, at most `chunk_window`
held in memory; the Assembler cross-fades them and releases audio front to
back, straight into the stem files.

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
import logging
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from musicsplit.errors import ModelChanged, UpstreamUnavailable
from musicsplit.gateway import metrics
from musicsplit.gateway.chunking import Assembler, Chunk, max_request_frames, plan_chunks
from musicsplit.gateway.jobstore import SeparationJob
from musicsplit.gateway.results import InputInfo, ResultStore
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.shadow import ShadowMirror
from musicsplit.gateway.upstream import Routed, Router

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


@dataclass
class _Totals:
    quality: float = 0.0
    weight: float = 0.0
    compute: float = 0.0
    cost: float = 0.0
    warnings: list[str] = field(default_factory=list)
    regions: set[str] = field(default_factory=set)
    peak_held: int = 0

    def add(self, chunk: Chunk, routed: Routed) -> None:
        p = routed.value.parameters or {}
        n = chunk.end - chunk.start
        if p.get("quality_score") is not None:
            self.quality += float(p["quality_score"]) * n
            self.weight += n
        self.compute += float(p.get("compute_seconds") or 0.0)
        self.cost += float(p.get("cost_usd") or 0.0)
        # The predictor joins warnings with "; " (never inside one). Clipping is the whole
        # input's, already in input_warnings; the rest once each, as the predictor wrote them.
        for w in (w.strip() for w in str(p.get("warnings") or "").split("; ")):
            if w and w not in self.warnings and not w.startswith("clipping"):
                self.warnings.append(w)
        self.regions.add(routed.endpoint.region)


def _served(routed: Routed) -> Pin:
    version = (routed.value.parameters or {}).get("model_version")
    return Pin(routed.model, str(version) if version else None)


class ChunkedSeparation:
    """One run of one job; `run()` returns the Outcome once the stems are written."""

    def __init__(self, job: SeparationJob, *, settings: GatewaySettings, router: Router, results: ResultStore,
                 chunked: bool, fallback: str | None, on_progress, mirror: ShadowMirror | None = None):
        self.job = job
        self.settings = settings
        self.router = router
        self.results = results
        self.chunked = chunked
        self.fallback = fallback
        self.on_progress = on_progress  # async (chunks_done, chunks_total) -> None
        self.mirror = mirror  # shadow traffic: each chunk a user gets may be compared with a canary's
        self.pin: Pin | None = None
        self.stem_names: set[str] | None = None

    async def run(self) -> Outcome:
        job, settings = self.job, self.settings
        info = await self.results.input_info(job.id)
        planned = plan(settings, info, self.chunked)
        chunks = planned.chunks
        await self.on_progress(0, len(chunks))
        output_format = job.params.get("output_format") or "wav"
        writer = self.results.stem_writer(job.id, output_format, info.sample_rate)
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
                    pending.add(asyncio.create_task(self._one(chunks[next_chunk], len(chunks), info, sem)))
                    next_chunk += 1
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    chunk, routed = t.result()
                    totals.add(chunk, routed)
                    stems = {k: np.asarray(v, dtype=np.float32) for k, v in routed.value.stems.items()}
                    self._check_stems(chunk, routed, stems)
                    released = assembler.add(chunk.index, stems)
                    totals.peak_held = max(totals.peak_held, assembler.held)
                    for _start, block in released:
                        # Shielded: a cancelled job must not close the files under a thread still writing.
                        writing = asyncio.ensure_future(asyncio.to_thread(self._write, writer, block))
                        await asyncio.shield(writing)
                    done += 1
                    await self.on_progress(done, len(chunks))
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
        return self._outcome(planned, info, stem_names, totals, output_format)

    @staticmethod
    def _write(writer, block: dict[str, np.ndarray]) -> None:
        for name, audio in block.items():
            writer.write(name, audio)

    async def _one(self, chunk: Chunk, total: int, info: InputInfo, sem: asyncio.Semaphore) -> tuple[Chunk, Routed]:
        settings, params = self.settings, self.job.params
        async with sem:
            samples = await self.results.read_input(self.job.id, chunk.start, chunk.end)
            with tracer.start_as_current_span("chunk", attributes={"chunk.index": chunk.index,
                                                                   "chunk.total": total}):
                outages = mismatches = 0
                while True:
                    pin = self.pin
                    try:
                        routed = await self.router.separate(
                            pin.model if pin else self.job.model, samples, info.sample_rate,
                            stems=params.get("stems"), shifts=params.get("shifts"),
                            fallback=None if pin else self.fallback, version=pin.version if pin else None)
                    except UpstreamUnavailable as exc:
                        # Only this chunk waits and tries again; the chunks already done stay done.
                        metrics.CHUNKS.labels(model=self.job.model, outcome="retried").inc()
                        outages += 1
                        if outages > settings.chunk_retries:
                            if self.pin is not None:
                                raise UpstreamUnavailable(
                                    f"model {self.pin.model} ({self.pin.version or 'unknown version'}), which "
                                    "separated this job's first chunks, is not answering; a job is never "
                                    "finished by another model or version: submit it again later",
                                    retry_after=exc.retry_after) from None
                            raise
                        await asyncio.sleep(min(exc.retry_after or 1.0, settings.chunk_retry_max_wait_s))
                        continue
                    served = _served(routed)
                    if self.pin is None:
                        self.pin = served
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
        return chunk, routed

    def _check_stems(self, chunk: Chunk, routed: Routed, stems: dict[str, np.ndarray]) -> None:
        wanted = self.job.params.get("stems")
        if not stems or (wanted and set(stems) != set(wanted)) or (
                self.stem_names is not None and set(stems) != self.stem_names):
            raise UpstreamProtocolError(
                f"predictor {routed.endpoint.url} answered chunk {chunk.index} with stems {sorted(stems)}, "
                f"expected {sorted(wanted or self.stem_names or []) or 'some'}")
        self.stem_names = set(stems)

    def _outcome(self, planned: Plan, info: InputInfo, stem_names: list[str], totals: _Totals,
                 output_format: str) -> Outcome:
        job, pin = self.job, self.pin
        warnings = list(job.result.get("input_warnings", [])) + totals.warnings
        if planned.forced:
            warnings.append(planned.forced)
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
            "chunks": len(planned.chunks),
            "peak_chunks_held": totals.peak_held,
            "output_format": output_format,
        }
        return Outcome(job.id, stem_names, result, pin.version if pin else None, model)

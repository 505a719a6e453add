"""The KServe model: load, then preprocess -> predict -> postprocess per request.

`predict()` only runs inference (in a worker thread, bounded by Admission);
decoding, validation, quality and encoding live in codec/validation/quality
and are called from preprocess/postprocess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import kserve
from kserve.errors import InvalidInput, ServerNotReady
from kserve.protocol.infer_type import InferRequest
from opentelemetry import trace

from musicsplit import __version__, quality
from musicsplit.audio import fit_length, resample
from musicsplit.errors import BadAudio, BadRequest, MusicsplitError, NotReady, PayloadTooLarge, Saturated
from musicsplit.predictor import metrics
from musicsplit.predictor.admission import Admission, admitted
from musicsplit.predictor.cost import separation_cost
from musicsplit.predictor.codec import ParsedRequest, build_response, check_stems, parse_request, select_stems
from musicsplit.predictor.loading import LoadedModel, ModelLoadError, load
from musicsplit.predictor.settings import PredictorSettings
from musicsplit.telemetry import extract
from musicsplit.validation import conform, join_warnings, validate

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.predictor")

OUTCOME_OF = {BadAudio: "bad_input", BadRequest: "bad_input", PayloadTooLarge: "too_large",
              Saturated: "saturated", NotReady: "not_ready"}


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "success"
    for klass, name in OUTCOME_OF.items():
        if isinstance(exc, klass):
            return name
    return "error"


def outcome_of_status(status: int) -> str:
    """Outcome of a response whatever produced it (our handlers or KServe's own)."""
    return {200: "success", 413: "too_large", 429: "saturated", 503: "not_ready"}.get(
        status, "bad_input" if 400 <= status < 500 else "error"
    )


@dataclass
class Job:
    request: InferRequest
    parsed: ParsedRequest
    mixture: np.ndarray  # at the model's rate and channel count
    warnings: list[str]
    source: str = "user"  # user | probe | shadow (metrics.request_source)
    stems: np.ndarray | None = None
    compute_seconds: float = 0.0


class SeparationModel(kserve.Model):
    def __init__(self, name: str, settings: PredictorSettings):
        super().__init__(name)
        self.settings = settings
        self.limits = settings.limits()
        self.loaded: LoadedModel | None = None
        self.load_error: str | None = None
        self.admission = Admission(settings.max_inflight, settings.max_queue)
        self._executor = ThreadPoolExecutor(settings.max_inflight, thread_name_prefix="inference")
        # Decoding, resampling, quality and encoding are seconds of CPU for long tracks:
        # off the event loop, so health checks, /metrics and 429s keep answering.
        self._cpu = ThreadPoolExecutor(settings.max_inflight + settings.max_queue, thread_name_prefix="codec")
        self._monthly = metrics.MonthlyCost()
        self._gpu_name: str | None = None
        metrics.READY.labels(model=name).set(0)

    # -- loading -----------------------------------------------------------------

    @property
    def version(self) -> str:
        return self.loaded.version if self.loaded else "unknown"

    def labels(self) -> dict[str, str]:
        return {"model": self.name, "model_version": self.version}

    def load(self) -> bool:
        """Load, warm up, then flip ready; a failure is recorded, never raised."""
        try:
            with tracer.start_as_current_span("model.load", attributes={"model": self.name}):
                loaded = load(self.settings.model_dir, self.settings.device, self.settings.precision,
                              self.settings.segment_batch)
                expected = [x.strip() for x in (self.settings.stems or "").split(",") if x.strip()]
                sources = loaded.separator.sources
                if any(s not in sources and s.removeprefix("no_") not in sources for s in expected):
                    raise ModelLoadError(f"the deployment expects stems {expected}, the model produces {sources}")
                expected_version = self.settings.expected_version
                if expected_version and loaded.manifest.version is None:
                    loaded.version = expected_version  # no manifest says otherwise: the deployment names it
                elif expected_version and loaded.version != expected_version:
                    raise ModelLoadError(
                        f"the model dir holds version {loaded.version}, the deployment expects "
                        f"{expected_version}: check musicsplit.yaml's version")
                if self.settings.cpu_threads:
                    import torch

                    torch.set_num_threads(self.settings.cpu_threads)
                if self.settings.warmup:
                    t = time.perf_counter()
                    sep = loaded.separator
                    sep.separate(np.zeros((sep.audio_channels, sep.samplerate), np.float32), shifts=0)
                    log.info("warm-up inference took %.2f s", time.perf_counter() - t)
        except Exception as exc:  # whatever broke, report it: a dead loader must not look like "loading"
            self.load_error = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            metrics.LOAD_FAILURES.labels(model=self.name).inc()
            log.error("model %s failed to load: %s", self.name, exc)
            self.ready = False
            return False
        self.loaded = loaded
        if loaded.device.startswith("cuda"):
            import torch

            self._gpu_name = torch.cuda.get_device_name(loaded.device)
        labels = self.labels()
        metrics.precreate(labels)
        metrics.LOAD_SECONDS.labels(**labels).set(loaded.load_seconds)
        metrics.MODEL_INFO.info({
            **labels, "architecture": loaded.architecture, "device": loaded.device, "precision": loaded.precision,
            "stems": ",".join(loaded.separator.sources), "released": str(loaded.manifest.released or ""),
            "source": str(loaded.manifest.source or self.settings.model_dir),
        })
        metrics.BUILD_INFO.info({"version": __version__})
        metrics.register_device_collector(labels, self._monthly)
        metrics.READY.labels(model=self.name).set(1)
        self.load_error = None
        self.ready = True
        log.info("model %s version %s ready on %s at %s (load %.2f s)", self.name, self.version,
                 loaded.device, loaded.precision, loaded.load_seconds)
        return True

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="model-load", daemon=True)
        thread.start()
        return thread

    def not_ready_error(self) -> NotReady:
        if self.load_error:
            return NotReady(f"model {self.name} failed to load: {self.load_error}", retry_after=30)
        return NotReady(f"model {self.name} is still loading", retry_after=5)

    def get_input_types(self) -> list[dict]:
        # FP32 waveform shown; BYTES [1] (an encoded file) is accepted under the same name.
        return [{"name": "audio", "datatype": "FP32", "shape": [-1, -1]}]

    def get_output_types(self) -> list[dict]:
        sources = self.loaded.separator.sources if self.loaded else []
        return [{"name": s, "datatype": "FP32", "shape": [-1, -1]} for s in sources]

    # -- request path ------------------------------------------------------------

    def record(self, outcome: str, seconds: float, source: str = "user") -> None:
        labels = {**self.labels(), "source": source}
        metrics.REQUESTS.labels(**labels, outcome=outcome).inc()
        if outcome == "success":
            metrics.LATENCY.labels(**labels).observe(seconds)

    async def __call__(self, body, headers=None, verb=kserve.model.InferenceVerb.PREDICT):
        """Admission, outcome metrics and error mapping around KServe's pipeline."""
        if admitted.get():  # the HTTP middleware did admission and accounting
            return await super().__call__(body, headers, verb)
        start = time.perf_counter()
        error = None
        try:
            if not self.ready:
                raise self.not_ready_error()
            async with self.admission.ticket():
                return await super().__call__(body, headers, verb)
        except MusicsplitError as exc:
            error = exc
            # gRPC only knows KServe's exception types: translate ours.
            if exc.status < 500 and exc.status != 429:
                raise InvalidInput(exc.message) from exc
            raise ServerNotReady(exc.message) from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.record(outcome_of(error), time.perf_counter() - start, metrics.request_source(headers))

    async def preprocess(self, payload: InferRequest, headers=None) -> Job:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, self._preprocess, payload, headers)

    def _preprocess(self, payload: InferRequest, headers=None) -> Job:
        if not isinstance(payload, InferRequest):
            raise BadRequest("this predictor speaks the v2 protocol: POST /v2/models/{name}/infer")
        ctx = extract(headers)
        sep = self.loaded.separator
        with tracer.start_as_current_span("decode", context=ctx):
            parsed = parse_request(payload, self.limits)
            check_stems(parsed.params.stems, sep.sources)
        with tracer.start_as_current_span("validate", context=ctx) as span:
            warnings = validate(parsed.audio, self.limits)
            span.set_attribute("audio.seconds", parsed.audio.seconds)
        with tracer.start_as_current_span("resample", context=ctx) as span:
            samples, changes = conform(parsed.audio, sep.samplerate, sep.audio_channels)
            span.set_attribute("audio.sample_rate", parsed.audio.sample_rate)
        return Job(payload, parsed, samples, warnings + changes, metrics.request_source(headers))

    async def predict(self, job: Job, headers=None) -> Job:
        ctx = extract(headers)
        sep = self.loaded.separator
        p = job.parsed.params
        metrics.INFLIGHT.labels(**self.labels()).inc()
        try:
            async with self.admission.running:
                with tracer.start_as_current_span("inference", context=ctx) as span:
                    span.set_attribute("model.version", self.version)
                    start = time.perf_counter()
                    job.stems = await asyncio.get_running_loop().run_in_executor(
                        self._executor,
                        lambda: sep.separate(job.mixture, shifts=p.shifts, overlap=p.overlap, segment=p.segment),
                    )
                    job.compute_seconds = time.perf_counter() - start
            self.admission.observe(job.compute_seconds)
        finally:
            metrics.INFLIGHT.labels(**self.labels()).dec()
        return job

    def cost(self, compute_seconds: float) -> float:
        """USD for `compute_seconds` of inference on this replica (predictor/cost.py)."""
        if self.loaded and self.loaded.device.startswith("cuda"):
            return separation_cost(compute_seconds, self.settings.gpu_price(self._gpu_name))
        return separation_cost(compute_seconds, self.settings.cpu_price_per_core_second, self.cpu_cores())

    def cpu_cores(self) -> int:
        """Cores a CPU inference occupies: the configured threads, else torch's, within the CPUs there are."""
        import torch

        return self.settings.cpu_threads or min(torch.get_num_threads(), os.cpu_count() or 1)

    async def postprocess(self, job: Job, headers=None, response_headers=None):
        return await asyncio.get_running_loop().run_in_executor(self._cpu, self._postprocess, job, headers)

    def _postprocess(self, job: Job, headers=None):
        ctx = extract(headers)
        sep = self.loaded.separator
        labels = {**self.labels(), "source": job.source}
        report = quality.assess(job.mixture, job.stems, sep.sources, sample_rate=sep.samplerate)
        rate = job.parsed.audio.sample_rate
        with tracer.start_as_current_span("encode", context=ctx):
            stems = select_stems(job.stems, sep.sources, job.parsed.params.stems)
            if rate != sep.samplerate:  # give stems back at the caller's rate, aligned with the input
                length = job.parsed.audio.samples.shape[-1]
                stems = {k: fit_length(resample(v, sep.samplerate, rate), length) for k, v in stems.items()}
            audio_seconds = job.parsed.audio.seconds
            cost = self.cost(job.compute_seconds)
            params = {
                "model": self.name,
                "model_version": self.version,
                "device": self.loaded.device,
                "precision": self.loaded.precision,
                "sample_rate": rate,
                "audio_seconds": round(audio_seconds, 3),
                "compute_seconds": round(job.compute_seconds, 4),
                "real_time_factor": round(job.compute_seconds / max(audio_seconds, 1e-6), 4),
                "cost_usd": cost,
                "warnings": join_warnings(job.warnings),
                **report.as_parameters(),
            }
            response = build_response(job.request, self.name, self.version, stems, rate,
                                      job.parsed.params.output_format, params)
        device = self.loaded.device.split(":")[0]
        metrics.AUDIO_SECONDS.labels(**labels).inc(audio_seconds)
        metrics.COMPUTE_SECONDS.labels(**labels, device=device).inc(job.compute_seconds)
        metrics.RTF.labels(**labels).observe(job.compute_seconds / max(audio_seconds, 1e-6))
        metrics.observe_quality(labels, report)
        metrics.SNR.labels(**labels).observe(report.snr_db)
        metrics.COST.labels(**labels, device=device).inc(cost)
        metrics.COST_PER_REQUEST.labels(**labels).observe(cost)
        for issue in report.issues():
            metrics.OUTPUT_ISSUES.labels(**labels, issue=issue).inc()
        self._monthly.add(cost)
        return response

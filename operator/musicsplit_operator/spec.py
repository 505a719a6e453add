"""The SeparationModel resource (musicsplit.io/v1alpha1) as typed Python.

The CRD's openAPIV3Schema (manifests/crd.yaml) refuses bad specs at
`kubectl apply` time; these models give the operator the same spec with
defaults filled in, and refuse what the schema cannot express.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP, VERSION, PLURAL, KIND = "musicsplit.io", "v1alpha1", "separationmodels", "SeparationModel"
ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
STANDARD_MODES = ("Standard", "RawDeployment")  # KServe v0.20's name, and the one before it
KNATIVE_MODES = ("Knative", "Serverless")

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'90s', '1m30s', '2h' -> seconds."""
    if not _DURATION.match(text or ""):
        raise ValueError(f"not a duration (e.g. 30s, 5m, 1h): {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))


class _Model(BaseModel):
    # A field's docstring is its documentation: the CRD's `description`
    # (`kubectl explain`), written by `python -m musicsplit.operator.crd`.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_attribute_docstrings=True)


REGISTRY_SCHEME = "mlflow://"


class ModelRef(_Model):
    """The model release to serve: which Demucs architecture, which version, where its files are."""

    architecture: str
    """Demucs architecture or pretrained name (htdemucs, htdemucs_ft, htdemucs_6s, mdx_extra, ...)."""
    # Required unless storageUri names a registry model, whose version the
    # operator resolves (registry.py); then, if set, it must match.
    version: str | None = None
    """Release version; must equal the model_version label the predictor exports (musicsplit.yaml).
    With an mlflow:// storageUri it comes from the model version's tag musicsplit.version, and if
    set here must match it."""
    storage_uri: str
    """Where KServe's storage initializer fetches the model dir; or an MLflow registered model
    (mlflow://models/NAME/VERSION, mlflow://models/NAME@ALIAS, mlflow://models/NAME/STAGE) the
    operator resolves to its storage URI."""
    released: str | None = None
    """Release date (YYYY-MM-DD), kept in status.history."""
    # The MLflow model version this release was resolved from (set by the
    # operator, never read from the spec): history and write-back name it.
    _registry: dict | None = PrivateAttr(default=None)

    @field_validator("storage_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v or "://" not in v:
            raise ValueError("storageUri must be a URI such as gs://bucket/models/htdemucs/4.0.1")
        return v

    @model_validator(mode="after")
    def _version(self):
        if self.version is None and not self.from_registry:
            raise ValueError("model.version is required unless storageUri names an MLflow model "
                             "(mlflow://models/NAME/VERSION or mlflow://models/NAME@ALIAS)")
        return self

    @property
    def from_registry(self) -> bool:
        return self.storage_uri.startswith(REGISTRY_SCHEME)

    @property
    def registry(self) -> dict | None:
        return self._registry

    def resolved(self, version: str, storage_uri: str, registry: dict) -> "ModelRef":
        """This release as the registry resolved it: what KServe fetches and the
        predictor reports."""
        out = self.model_copy(update={"version": version, "storage_uri": storage_uri})
        out._registry = registry
        return out


class GPU(_Model):
    """GPUs per predictor replica."""

    count: int = 0
    """nvidia.com/gpu requested and limited per replica (0 - CPU only)."""
    type: str | None = None
    """Node label nvidia.com/gpu.product the replicas are scheduled on, e.g. NVIDIA-L4."""


class Resources(_Model):
    """Compute per predictor replica."""

    gpu: GPU = GPU()
    """GPUs per replica."""
    cpu: str | None = None
    """CPU request per replica (Kubernetes quantity, e.g. 2 or 500m)."""
    memory: str | None = None
    """Memory request and limit per replica (Kubernetes quantity, e.g. 8Gi)."""


DEFAULT_MAX_AUDIO_SECONDS = 20 * 60.0  # the predictor's own default (musicsplit.validation)
TIMEOUT_MARGIN_S = 60.0  # decoding, queueing and encoding around the separation itself


class PredictorSpec(_Model):
    """The KServe predictor serving the model."""

    image: str | None = None
    """Custom predictor image (default - the musicsplit ServingRuntime's)."""
    runtime: str | None = "musicsplit"
    """KServe ServingRuntime name."""
    resources: Resources = Resources()
    """Compute per replica."""
    node_selector: dict[str, str] = {}
    """Node labels the predictor's pods must match (Kubernetes' pod nodeSelector)."""
    tolerations: list[dict] = []
    """Taints the predictor's pods tolerate (Kubernetes' pod tolerations), e.g. GPU nodes' nvidia.com/gpu."""
    max_audio_seconds: float | None = Field(None, gt=0)
    """The longest track, in seconds, one request may carry (the predictor refuses longer ones); default - the predictor's own, 1200."""
    timeout: str | None = None
    """KServe's per-request timeout (spec.predictor.timeout), e.g. 25m; default - maxAudioSeconds plus 60 s (KServe's Standard mode otherwise cuts every route at 60 s)."""

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    def timeout_s(self) -> int:
        if self.timeout is not None:
            return max(1, int(parse_duration(self.timeout)))
        return int((self.max_audio_seconds or DEFAULT_MAX_AUDIO_SECONDS) + TIMEOUT_MARGIN_S)


class Replicas(_Model):
    """How many predictor replicas KServe's autoscaler may run."""

    min: int = 1
    """Fewest replicas (0 - scale to zero when idle, Serverless only); default 1."""
    max: int = 1
    """Most replicas; default - min (or 1)."""

    @model_validator(mode="before")
    @classmethod
    def _max_follows_min(cls, data):
        # `replicas: {min: 2}` alone means at least (and so at most) 2: a default
        # max of 1 would be refused with a message about a field the user never set.
        if isinstance(data, dict) and data.get("max") is None and data.get("min") is not None:
            data = {**data, "max": max(int(data["min"]), 1)}
        return data

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) is below replicas.min ({self.min})")
        return self


class RolloutSpec(_Model):
    """How a new version's canary takes traffic, step by step, and when it gives up."""

    steps: list[int] | None = None
    """Canary traffic percentages in order, strictly increasing; passing the last one promotes.
    Default - stepWeight up to maxWeight, else 10, 25, 50."""
    step_weight: int | None = None
    """Traffic percent added per step (Flagger's stepWeight), when steps is not set."""
    max_weight: int | None = None
    """Highest canary percent before promotion with stepWeight (default 50)."""
    interval: str = "1m"
    """Time between analyses, and so between steps (e.g. 30s, 5m)."""
    progress_deadline: str = "10m"
    """How long a new revision may take to become ready before the rollout is rolled back."""
    paused: bool = False
    """True - the canary stays at its weight, analyses stop, until set back to false."""
    hold_deadline: str | None = None
    """How long a canary may stay at one weight once an analysis first failed to move it on (no
    evidence, a closed confirm gate, a failed check below the threshold); unset - no limit."""
    on_hold_deadline: Literal["rollback", "escalate"] = "rollback"
    """rollback - send all traffic back to the stable version; escalate - keep the canary's
    traffic, set condition HoldDeadlineExceeded and raise the MusicsplitRolloutHoldDeadlineExceeded alert."""

    @model_validator(mode="after")
    def _weights(self):
        self.weights()  # raises on nonsense
        parse_duration(self.interval)
        parse_duration(self.progress_deadline)
        if self.hold_deadline is not None:
            parse_duration(self.hold_deadline)
        return self

    def weights(self) -> list[int]:
        """The canary traffic percentages, in order; passing the last one promotes."""
        if self.steps:
            ws = list(self.steps)
        elif self.step_weight:
            top = self.max_weight or 50
            ws = list(range(self.step_weight, top + 1, self.step_weight)) or [top]
        else:
            ws = [10, 25, 50]
        if any(not 0 < w <= 100 for w in ws) or ws != sorted(set(ws)):
            raise ValueError(f"rollout steps must increase strictly within 1..100, got {ws}")
        return ws

    @property
    def interval_s(self) -> float:
        return parse_duration(self.interval)

    @property
    def progress_deadline_s(self) -> float:
        return parse_duration(self.progress_deadline)

    @property
    def hold_deadline_s(self) -> float | None:
        return None if self.hold_deadline is None else parse_duration(self.hold_deadline)


HookType = Literal["confirm-rollout", "pre-rollout", "rollout", "confirm-traffic-increase", "confirm-promotion",
                   "post-rollout", "rollback", "event"]
MAX_WEBHOOK_TIMEOUT_S = 300.0  # a hook call holds one of the operator's webhook workers this long at most


class Webhook(_Model):
    """A webhook at one of Flagger's points (its `type`); 2xx passes."""

    name: str = Field(min_length=1, max_length=63)
    """Unique within the model: its last call is kept in status.webhooks under this name."""
    type: HookType = "rollout"  # Flagger's default
    """Flagger's point of the rollout it is called at; confirm-* gates hold until it passes."""
    url: str
    """Where the JSON POST goes; only URLs in the operator's MUSICSPLIT_OPERATOR_WEBHOOK_URL_ALLOWLIST when it has one."""
    timeout: str = "10s"  # Flagger's default
    """How long to wait for an answer, at most 5m."""
    metadata: dict[str, str] = {}
    """Strings sent along in the POST's metadata."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/?#]+", v or ""):
            raise ValueError(f"webhook url must be an http:// or https:// URL, got {v!r}")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        if not 0 < parse_duration(v) <= MAX_WEBHOOK_TIMEOUT_S:
            raise ValueError(f"webhook timeout must be above 0 and at most {MAX_WEBHOOK_TIMEOUT_S:g}s, got {v}")
        return v

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)


class GoldenSetSpec(_Model):
    """Which reference tracks the golden-set probe separates, and the gate on
    their SDR. Sets named together are pooled: one mean SDR over all tracks."""

    builtin: bool | None = None
    """The built-in set (default - true unless configMap or storageUri is set): four synthetic 6 s
    mixtures and, unless realMusic is false, two 10 s excerpts of a CC0 song with its true stems."""
    real_music: bool = True
    """With builtin, also the two real CC0 excerpts (20 s of audio; their mean SDR is reported apart,
    as set builtin-real); false - the synthetic items only (a cheaper probe)."""
    config_map: str | None = None
    """A ConfigMap in this namespace, binaryData keys TRACK.mixture.wav and TRACK.STEM.wav (wav or
    flac). ConfigMaps hold at most 1 MiB (a few seconds of audio): use storageUri for more; create it
    with kubectl create configmap --from-file (kubectl apply would also copy it into an annotation,
    capped at 256 KiB)."""
    storage_uri: str | None = None
    """One folder per track holding mixture.wav and one STEM.wav per stem (MUSDB layout), fetched
    with KServe's storage code; only under a prefix in the operator's MUSICSPLIT_OPERATOR_GOLDEN_STORAGE_ALLOWLIST."""
    max_sdr_drop_db: float | None = None
    """Roll back when the canary's mean SDR is this much below the stable's (default - analysis.maxSdrDropDb, else 1.0)."""
    min_sdr_db: float | None = None
    """Roll back when the canary's mean SDR is below this (dB); none by default."""
    verify_every: str = "1h"
    """Continuous verification - how often the serving version is scored on this set again once
    promoted (status.quality, musicsplit_golden_sdr_db{role="serving"}), to catch a drop against its
    release score (a broken GPU node, a precision change, a bad image); 0 - never."""

    @field_validator("storage_uri")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError("goldenSet.storageUri must be a URI such as s3://bucket/golden/")
        return v

    @field_validator("verify_every")
    @classmethod
    def _every(cls, v: str) -> str:
        if v != "0":
            parse_duration(v)
        return v

    @property
    def verify_every_s(self) -> float:
        """0: continuous verification off."""
        return 0.0 if self.verify_every == "0" else parse_duration(self.verify_every)

    @property
    def uses_builtin(self) -> bool:
        return self.builtin if self.builtin is not None else not (self.config_map or self.storage_uri)

    @property
    def enabled(self) -> bool:
        return bool(self.uses_builtin or self.config_map or self.storage_uri)

    @property
    def ref(self) -> str:
        """Which sets, in one string: probe results of another set are no evidence."""
        builtin = "builtin" if self.real_music else "builtin-synthetic"
        parts = ([builtin] if self.uses_builtin else []) + ([f"configMap:{self.config_map}"] if self.config_map
                                                              else []) + (
            [f"storageUri:{self.storage_uri}"] if self.storage_uri else [])
        return "+".join(parts)


class AnalysisSpec(_Model):
    """What a canary must show, at every step, to take more traffic: users' requests
    (Prometheus), the golden-set probe, webhooks, shadow agreement."""

    prometheus_url: str | None = None
    """Prometheus to query instead of the operator's own; only one in the operator's allowlist
    (MUSICSPLIT_OPERATOR_PROMETHEUS_URL_ALLOWLIST), else the rollout holds with AnalysisConfigured=False."""
    window: str | None = None
    """PromQL range each analysis looks back over (default - the rollout interval, at least 10s)."""
    min_requests: int = 20
    """Users' requests the canary must have served in the window before it is judged; fewer hold."""
    max_error_rate: float = 0.01
    """Highest fraction of the canary's requests that may fail (0..1)."""
    max_p99_latency_seconds: float = 60.0
    """Highest 99th percentile of the canary's request latency, in seconds."""
    min_quality_score: float = 0.7
    """Lowest mean output quality score (0..1) the canary may have."""
    max_quality_drop: float = 0.05
    """Most the canary's mean quality score may be below the stable's."""
    golden_set: GoldenSetSpec = GoldenSetSpec()
    """The reference tracks the canary's golden-set probe separates (sets named together are
    pooled). Default {}: the built-in set (synthetic items and real CC0 excerpts). Before v1alpha1 objects it was a boolean: true
    is {}, false is {builtin: false} (no golden-set gate)."""
    max_sdr_drop_db: float | None = None
    """Deprecated - goldenSet.maxSdrDropDb wins."""
    threshold: int = Field(1, ge=1, le=100)
    """Failed analyses before a rollback (Flagger's threshold; default 1), counted over the whole
    rollout of a version, not reset when a step advances."""
    webhooks: list[Webhook] = Field([], max_length=20)
    """Flagger's webhooks - called with a JSON POST at their point of the rollout; 2xx passes."""
    min_shadow_agreement_db: float | None = None
    """Require this mean SDR (dB, the lowest stem's) of the canary's stems against the stable's on
    users' requests the gateway mirrored (shadow traffic); unset: not required. Serverless only:
    RawDeployment runs one version at a time, and a step at 100 % serves users no stable output to compare."""
    min_shadow_comparisons: int = 10
    """Mirrored requests compared in the window before shadowAgreement is judged (default 10); fewer hold."""

    @field_validator("webhooks")
    @classmethod
    def _unique(cls, v: list[Webhook]) -> list[Webhook]:
        names = [h.name for h in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"webhook names must be unique (their results are kept by name): {', '.join(twice)}")
        return v

    def hooks(self, type_: str) -> list[Webhook]:
        return [h for h in self.webhooks if h.type == type_]

    @field_validator("golden_set", mode="before")
    @classmethod
    def _was_bool(cls, v):
        # v1alpha1 had `goldenSet: true|false`; objects stored before the CRD
        # changed still say so: true is the built-in set, false is no set.
        if isinstance(v, bool):
            return {} if v else {"builtin": False}
        return v

    @property
    def sdr_drop_limit(self) -> float:
        g = self.golden_set.max_sdr_drop_db
        return g if g is not None else self.max_sdr_drop_db if self.max_sdr_drop_db is not None else 1.0


class SeparationModelSpec(_Model):
    """A separation model served by KServe, and how new versions of it are rolled out."""

    model: ModelRef
    """The release to serve; changing it starts a canary rollout of the new release."""
    predictor: PredictorSpec = PredictorSpec()
    """The KServe predictor: runtime, image, compute, scheduling."""
    replicas: Replicas = Replicas()
    """Predictor replicas (KServe's minReplicas and maxReplicas)."""
    stems: list[str] = []
    """Stems the predictor returns (its MUSICSPLIT_STEMS); default - every stem the model outputs."""
    cost_per_gpu_second: float | None = None
    """Price of one GPU-second (the predictor's MUSICSPLIT_GPU_PRICE_PER_SECOND), for the cost per separation it reports."""
    deployment_mode: Literal["Serverless", "RawDeployment", "Knative", "Standard"] = "Serverless"
    """KServe deployment mode, in either vocabulary (KServe v0.20 renamed RawDeployment to Standard and Serverless to Knative). Standard mode splits traffic only on KServe v0.20+ (spec.canary); before that a new version rolls out all at once."""
    rollout: RolloutSpec = RolloutSpec()
    """Canary steps, their pace and deadlines."""
    analysis: AnalysisSpec = AnalysisSpec()
    """The checks a canary passes at each step."""

    @property
    def standard(self) -> bool:
        """KServe's Standard (formerly RawDeployment) mode: Deployments, no Knative revisions."""
        return self.deployment_mode in STANDARD_MODES

    def window_s(self) -> float:
        return parse_duration(self.analysis.window) if self.analysis.window else max(self.rollout.interval_s, 10.0)


def parse_spec(spec: dict) -> SeparationModelSpec:
    """The spec with defaults; raises pydantic.ValidationError with a readable message."""
    return SeparationModelSpec.model_validate(dict(spec or {}))

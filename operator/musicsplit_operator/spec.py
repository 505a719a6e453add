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
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


REGISTRY_SCHEME = "mlflow://"


class ModelRef(_Model):
    architecture: str
    # Required unless storageUri names a registry model, whose version the
    # operator resolves (registry.py); then, if set, it must match.
    version: str | None = None
    storage_uri: str
    released: str | None = None
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
    count: int = 0
    type: str | None = None


class Resources(_Model):
    gpu: GPU = GPU()
    cpu: str | None = None
    memory: str | None = None


DEFAULT_MAX_AUDIO_SECONDS = 20 * 60.0  # the predictor's own default (musicsplit.validation)
TIMEOUT_MARGIN_S = 60.0  # decoding, queueing and encoding around the separation itself


class PredictorSpec(_Model):
    image: str | None = None
    runtime: str | None = "musicsplit"
    resources: Resources = Resources()
    node_selector: dict[str, str] = {}
    tolerations: list[dict] = []
    # The longest track one request may carry (the predictor refuses longer ones);
    # None: the predictor's default, 20 minutes.
    max_audio_seconds: float | None = Field(None, gt=0)
    # KServe's per-request timeout (spec.predictor.timeout); None: long enough
    # for the longest track at real time on the slowest device, plus a margin
    # (Standard mode otherwise cuts every route at 60 s).
    timeout: str | None = None

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
    min: int = 1
    max: int = 1

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) is below replicas.min ({self.min})")
        return self


class RolloutSpec(_Model):
    steps: list[int] | None = None
    step_weight: int | None = None
    max_weight: int | None = None
    interval: str = "1m"
    progress_deadline: str = "10m"
    paused: bool = False
    # How long a canary may stay at one weight once an analysis first failed to
    # move it on (no evidence, a closed confirm gate, a failed check below the
    # threshold); None: as long as it takes.
    hold_deadline: str | None = None
    on_hold_deadline: Literal["rollback", "escalate"] = "rollback"

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
    type: HookType = "rollout"  # Flagger's default
    url: str
    timeout: str = "10s"  # Flagger's default
    metadata: dict[str, str] = {}

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

    # None: the built-in synthetic set unless a configMap or storageUri is named.
    builtin: bool | None = None
    config_map: str | None = None  # binaryData TRACK.mixture.wav, TRACK.STEM.wav (1 MiB in all)
    storage_uri: str | None = None  # one folder per track: mixture.wav and STEM.wav (MUSDB-style)
    max_sdr_drop_db: float | None = None  # default: analysis.maxSdrDropDb, else 1.0
    min_sdr_db: float | None = None  # the canary's mean SDR floor (dB), none by default

    @field_validator("storage_uri")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError("goldenSet.storageUri must be a URI such as s3://bucket/golden/")
        return v

    @property
    def uses_builtin(self) -> bool:
        return self.builtin if self.builtin is not None else not (self.config_map or self.storage_uri)

    @property
    def enabled(self) -> bool:
        return bool(self.uses_builtin or self.config_map or self.storage_uri)

    @property
    def ref(self) -> str:
        """Which sets, in one string: probe results of another set are no evidence."""
        parts = (["builtin"] if self.uses_builtin else []) + ([f"configMap:{self.config_map}"] if self.config_map
                                                              else []) + (
            [f"storageUri:{self.storage_uri}"] if self.storage_uri else [])
        return "+".join(parts)


class AnalysisSpec(_Model):
    # None: the operator's own Prometheus; another URL only if the operator allows it.
    prometheus_url: str | None = None
    window: str | None = None  # PromQL range; default: the rollout interval
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_p99_latency_seconds: float = 60.0
    min_quality_score: float = 0.7
    max_quality_drop: float = 0.05
    golden_set: GoldenSetSpec = GoldenSetSpec()
    max_sdr_drop_db: float | None = None  # before goldenSet was an object; goldenSet.maxSdrDropDb wins
    # Failed analyses before a rollback (Flagger's `threshold`, and its default):
    # counted over the whole rollout of a version, not reset when a step advances.
    threshold: int = Field(1, ge=1, le=100)
    webhooks: list[Webhook] = Field([], max_length=20)
    # Shadow agreement (ADR 0108): SDR of the canary's stems against the stable's on
    # users' requests the gateway mirrored. None: not required.
    min_shadow_agreement_db: float | None = None
    min_shadow_comparisons: int = 10

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
    model: ModelRef
    predictor: PredictorSpec = PredictorSpec()
    replicas: Replicas = Replicas()
    stems: list[str] = []
    cost_per_gpu_second: float | None = None
    # Both of KServe's vocabularies: v0.20 renamed RawDeployment to Standard and
    # Serverless to Knative; either name means the same mode here.
    deployment_mode: Literal["Serverless", "RawDeployment", "Knative", "Standard"] = "Serverless"
    rollout: RolloutSpec = RolloutSpec()
    analysis: AnalysisSpec = AnalysisSpec()

    @property
    def standard(self) -> bool:
        """KServe's Standard (formerly RawDeployment) mode: Deployments, no Knative revisions."""
        return self.deployment_mode in STANDARD_MODES

    def window_s(self) -> float:
        return parse_duration(self.analysis.window) if self.analysis.window else max(self.rollout.interval_s, 10.0)


def parse_spec(spec: dict) -> SeparationModelSpec:
    """The spec with defaults; raises pydantic.ValidationError with a readable message."""
    return SeparationModelSpec.model_validate(dict(spec or {}))

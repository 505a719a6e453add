"""The SeparationModel resource (musicsplit.io/v1alpha1) as typed Python.

The CRD's openAPIV3Schema (manifests/crd.yaml) refuses bad specs at
`kubectl apply` time; these models give the operator the same spec with
defaults filled in, and refuse what the schema cannot express.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP, VERSION, PLURAL, KIND = "musicsplit.io", "v1alpha1", "separationmodels", "SeparationModel"
ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"

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


class ModelRef(_Model):
    architecture: str
    version: str
    storage_uri: str
    released: str | None = None

    @field_validator("storage_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v or "://" not in v:
            raise ValueError("storageUri must be a URI such as gs://bucket/models/htdemucs/4.0.1")
        return v


class GPU(_Model):
    count: int = 0
    type: str | None = None


class Resources(_Model):
    gpu: GPU = GPU()
    cpu: str | None = None
    memory: str | None = None


class PredictorSpec(_Model):
    image: str | None = None
    runtime: str | None = "musicsplit"
    resources: Resources = Resources()
    node_selector: dict[str, str] = {}
    tolerations: list[dict] = []


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


class AnalysisSpec(_Model):
    # None: the operator's own Prometheus; another URL only if the operator allows it.
    prometheus_url: str | None = None
    window: str | None = None  # PromQL range; default: the rollout interval
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_p99_latency_seconds: float = 60.0
    min_quality_score: float = 0.7
    max_quality_drop: float = 0.05
    golden_set: bool = True
    max_sdr_drop_db: float = 1.0
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


class SeparationModelSpec(_Model):
    model: ModelRef
    predictor: PredictorSpec = PredictorSpec()
    replicas: Replicas = Replicas()
    stems: list[str] = []
    cost_per_gpu_second: float | None = None
    deployment_mode: Literal["Serverless", "RawDeployment"] = "Serverless"
    rollout: RolloutSpec = RolloutSpec()
    analysis: AnalysisSpec = AnalysisSpec()

    @property
    def raw(self) -> bool:
        return self.deployment_mode == "RawDeployment"

    def window_s(self) -> float:
        return parse_duration(self.analysis.window) if self.analysis.window else max(self.rollout.interval_s, 10.0)


def parse_spec(spec: dict) -> SeparationModelSpec:
    """The spec with defaults; raises pydantic.ValidationError with a readable message."""
    return SeparationModelSpec.model_validate(dict(spec or {}))

"""The operator's settings, read from the environment (MUSICSPLIT_OPERATOR_*)."""

from __future__ import annotations

import re

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICSPLIT_OPERATOR_")

    # How often each SeparationModel is reconciled (kopf timer). The rollout's
    # own interval (spec.rollout.interval) decides when analyses run.
    tick_seconds: float = 10.0
    # The Prometheus every analysis queries, unless a SeparationModel names
    # another one in spec.analysis.prometheusUrl that is in the allowlist.
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    # JSON list of the URLs spec.analysis.prometheusUrl may name; any other is
    # refused (condition AnalysisConfigured=False) and never requested.
    prometheus_url_allowlist: list[str] = []
    # The scrape label that holds a target's namespace; analysis queries select
    # the SeparationModel's namespace by it (clusters that relabel rename it).
    namespace_label: str = "namespace"
    # Per Prometheus query; a slower answer counts as unreachable (hold).
    prometheus_timeout_seconds: float = 10.0
    # Per golden-set request (a few short mixtures per model version).
    probe_timeout_seconds: float = 300.0
    # Golden-set probes running at once, over all SeparationModels (each takes
    # a thread; the reconcile ticks never wait for one).
    probe_workers: int = 2
    # Webhook calls running at once, over all SeparationModels (each takes a
    # thread for at most its hook's timeout; the ticks never wait for one).
    webhook_workers: int = 4
    # JSON list of URL prefixes (scheme://host[:port][/path]) spec.analysis.webhooks
    # may call; [] (the default): any http(s) URL, as Flagger does. A hook
    # outside it is never called: its gate stays closed, its check holds.
    webhook_url_allowlist: list[str] = []
    # The operator's own /metrics (rollout phase, canary weight, holds, outcomes); 0: off.
    metrics_port: int = 8081
    metrics_address: str = "0.0.0.0"
    # Kubernetes Events are posted for kopf's own log lines at this level and above.
    event_log_level: str = "WARNING"

    @field_validator("namespace_label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not _LABEL_NAME.match(v):
            raise ValueError(f"not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*): {v!r}")
        return v

    @field_validator("probe_workers", "webhook_workers")
    @classmethod
    def _workers(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1")
        return v

    @field_validator("webhook_url_allowlist")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        bad = [u for u in v if not re.match(r"^https?://[^/?#]+", u)]
        if bad:
            raise ValueError(f"webhook_url_allowlist entries must be http(s) URLs, not {bad}")
        return v

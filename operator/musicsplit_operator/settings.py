"""The operator's settings, read from the environment (MUSICSPLIT_OPERATOR_*)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICSPLIT_OPERATOR_")

    # How often each SeparationModel is reconciled (kopf timer). The rollout's
    # own interval (spec.rollout.interval) decides when analyses run.
    tick_seconds: float = 10.0
    # Per Prometheus query; a slower answer counts as unreachable (hold).
    prometheus_timeout_seconds: float = 10.0
    # Per golden-set request (a few short mixtures per model version).
    probe_timeout_seconds: float = 300.0
    # The operator's own /metrics (rollout phase, canary weight, holds, outcomes); 0: off.
    metrics_port: int = 8081
    metrics_address: str = "0.0.0.0"
    # Kubernetes Events are posted for kopf's own log lines at this level and above.
    event_log_level: str = "WARNING"

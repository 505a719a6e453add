"""The operator's settings, read from the environment (MUSICSPLIT_OPERATOR_*)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import field_validator, model_validator
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
    # JSON list of networks (CIDRs, e.g. ["10.20.0.0/16"]) webhooks may reach
    # although they are loopback, link-local, private or reserved (egress.py);
    # [] (the default): none, only public addresses or the allowlist's URLs.
    egress_allowed_networks: list[str] = []
    # Golden sets a SeparationModel names by storage URI (spec.analysis.goldenSet.storageUri)
    # are fetched only from under these URI prefixes (JSON list); [] refuses all of them
    # (ConfigMaps and the built-in set need nothing here).
    golden_storage_allowlist: list[str] = []
    # Where fetched golden sets are cached (None: a temporary directory of this process).
    golden_cache_dir: str | None = None
    # The cache's size, and one set's: a bigger set is refused (the download stops there).
    golden_cache_max_bytes: int = 1 << 30
    golden_set_max_bytes: int = 256 << 20
    # A fetch slower than this is stopped (the set counts as unavailable).
    golden_fetch_timeout_seconds: float = 120.0
    # A cached set is fetched again after this long (an edited set is then seen).
    golden_cache_ttl_seconds: float = 600.0
    # The most audio one golden set may hold (seconds, all tracks): the probe sends all of it.
    golden_set_max_seconds: float = 600.0
    # MLflow tracking/registry server for spec.model.storageUri mlflow://models/...; None: no
    # registry. Credentials: MLflow's own MLFLOW_TRACKING_TOKEN, or _USERNAME / _PASSWORD.
    mlflow_tracking_uri: str | None = None
    # Per MLflow request (no retries: a resolution that fails is tried again later).
    mlflow_timeout_seconds: float = 10.0
    # Which KServe the InferenceServices are written for: auto (read the
    # InferenceService schema from the API server at start: spec.canary means
    # v0.20+, with Standard-mode canaries and the Standard/Knative mode names),
    # v0.20, or legacy (0.15-0.19: RawDeployment/Serverless, no Standard split).
    kserve_api: Literal["auto", "v0.20", "legacy"] = "auto"
    # The cluster's DNS domain: Standard-mode predictor Services answer at
    # http://<isvc>-<predictor>-predictor.<namespace>.svc.<domain>.
    cluster_domain: str = "cluster.local"
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

    @field_validator("egress_allowed_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError as e:
                raise ValueError(f"egress_allowed_networks: {e}") from None
        return v

    @model_validator(mode="after")
    def _golden_bounds(self):
        if self.golden_set_max_bytes > self.golden_cache_max_bytes:
            raise ValueError(f"golden_set_max_bytes ({self.golden_set_max_bytes}) is over golden_cache_max_bytes "
                             f"({self.golden_cache_max_bytes}): no set that size could be cached")
        return self

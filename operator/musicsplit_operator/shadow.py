"""Shadow agreement (ADR 0108): what the gateway needs to mirror users'
requests to a canary (`status.shadow`), and the analysis' measure of how
well the canary agrees with the stable version on them.

The gateway compares, per stem, the canary's answer to a mirrored request
with the stable answer the user got (SDR in dB) and exports the histogram
`musicsplit_gateway_shadow_agreement_db{model, model_namespace,
canary_version, stable_version, stem}`. The gateway's own scrape
`namespace` is the gateway pod's, not the SeparationModel's, so the
queries select the SeparationModel's namespace by `model_namespace`, which
the gateway sets from the namespace it reads SeparationModels in.
"""

from __future__ import annotations

import logging

import httpx

from . import egress
from .prometheus import PrometheusUnavailable, _esc, _growth, query_vector
from .router import Observed, TrafficMode, traffic_mode
from .spec import SeparationModelSpec
from .status import ACTIVE

log = logging.getLogger(__name__)

METRIC = "musicsplit_gateway_shadow_agreement_db"


def published(spec: SeparationModelSpec, status: dict, obs: Observed, mode: TrafficMode | None = None) -> dict | None:
    """`status.shadow` for this tick, or None (the key is then removed).

    Only while a Serverless canary step serves users both versions: KServe's
    `latest` tag URL reaches the canary's revision alone once the latest
    revision is ready and routed the canary's share (right after a route
    change the tag may still lead to the stable). RawDeployment runs one
    version at a time, and at 100 % users get no stable answer to compare.
    """
    mode = mode or traffic_mode(spec)
    if not mode.splits or status.get("phase") not in ACTIVE:
        return None
    weight = status.get("canaryWeight") or 0
    url = mode.canary_url(obs, status)
    if not (0 < weight < 100 and url and obs.latest_ready and mode.routed(obs, status)
            and obs.route[0] == status.get("canaryStorageUri")):
        return None
    canary, stable = status.get("canaryVersion"), status.get("stableVersion")
    if not canary or not stable:
        return None
    return {"canaryUrl": url, "canaryVersion": canary, "stableVersion": stable}


def required(spec: SeparationModelSpec, status: dict, mode: TrafficMode | None = None) -> bool:
    """Whether the analysis judges shadow agreement at this step: asked for,
    and users get stable answers to compare with (see `published`)."""
    weight = status.get("canaryWeight") or 0
    return (spec.analysis.min_shadow_agreement_db is not None and (mode or traffic_mode(spec)).splits
            and 0 < weight < 100)


def queries(model: str, namespace: str, canary_version: str, stable_version: str, window_s: float) -> dict[str, str]:
    """Per stem over the window: the mean agreement and the number of comparisons."""
    w = f"{max(int(window_s), 1)}s"
    labels = {"model": model, "model_namespace": namespace, "canary_version": canary_version,
              "stable_version": stable_version}
    sel = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
    count = f"sum by (stem) ({_growth(METRIC + '_count', sel, w)})"
    return {"agreement": f"sum by (stem) ({_growth(METRIC + '_sum', sel, w)}) / {count}", "comparisons": count}


def measure(*, prometheus_url: str, model: str, namespace: str, canary_version: str, stable_version: str,
            window_s: float, timeout_s: float = 10.0) -> dict:
    """The shadow part of the Measurements; an unusable Prometheus is a hold reason."""
    q = queries(model, namespace, canary_version, stable_version, window_s)
    try:
        with httpx.Client(timeout=timeout_s) as client:
            agreement = query_vector(client, prometheus_url, q["agreement"], "stem")
            counts = query_vector(client, prometheus_url, q["comparisons"], "stem")
    except PrometheusUnavailable as e:
        log.warning("Prometheus at %s: %s", egress.redact(prometheus_url), e)
        return {"prometheus_error": str(e), "prometheus_reason": e.reason}
    # A request mirrored with a subset of stems compares only those: every comparison counts once.
    return {"shadow_agreement": agreement or None, "shadow_comparisons": max(counts.values(), default=0.0)}

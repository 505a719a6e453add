"""Specs, statuses and measurements the pure decision tests build on."""

from __future__ import annotations

from datetime import datetime, timezone

from musicsplit.operator import scheduler
from musicsplit.operator.analysis import Measurements, VersionMetrics
from musicsplit.operator.router import Observed
from musicsplit.operator.spec import parse_spec

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
V1 = {"architecture": "htdemucs", "version": "1.0.0", "storageUri": "gs://m/htdemucs/1.0.0"}
V2 = {"architecture": "htdemucs", "version": "2.0.0", "storageUri": "gs://m/htdemucs/2.0.0"}


def spec(model=V2, **over):
    body = {"model": model, "rollout": {"steps": [10, 50], "interval": "1m"},
            "analysis": {"minRequests": 20, "maxErrorRate": 0.05, "maxP99LatencySeconds": 30,
                         "minQualityScore": 0.7, "maxQualityDrop": 0.05, "maxSdrDropDb": 1.0}}
    for k, v in over.items():
        body[k] = {**body.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_spec(body)


def serving(uri, pct=None, ready=True):
    return Observed(exists=True, storage_uri=uri, canary_percent=pct, ready=ready, latest_ready=ready,
                    latest_percent=pct if pct is not None else 100, urls={"latest": "http://c", "prev": "http://s"})


STABLE = {"phase": "Succeeded", "stableVersion": "1.0.0", "stableStorageUri": V1["storageUri"], "history": [
    {"version": "1.0.0", "storageUri": V1["storageUri"], "outcome": "promoted", "at": "x", "reason": "r"}]}

HEALTHY = VersionMetrics(requests=100, errors=0, p99_seconds=2.0, quality=0.9)


def good(**kw):
    return Measurements(canary=kw.get("canary", HEALTHY), stable=kw.get("stable", HEALTHY),
                        canary_sdr=kw.get("canary_sdr", 6.0), stable_sdr=kw.get("stable_sdr", 6.2),
                        prometheus_error=kw.get("prometheus_error"), probe_error=kw.get("probe_error"),
                        probe_pending=kw.get("probe_pending"))


def start_canary(sp=None):
    sp = sp or spec()
    plan = scheduler.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    return sp, plan

"""The operator's own Prometheus metrics: a view of the status it writes
(the status stays the only state; a restarted operator re-derives these)."""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Gauge, start_http_server

from .analysis import golden_series
from .policy import OUTCOMES as HOOK_RESULTS
from .spec import HookType
from .status import PHASES, history_added
from .verification import series as verification_series

LABELS = ("namespace", "name")

PHASE = Gauge("musicsplit_rollout_phase", "1 for the SeparationModel's current rollout phase", (*LABELS, "phase"))
WEIGHT = Gauge("musicsplit_rollout_canary_weight", "Traffic percent the canary gets (0: no canary)", LABELS)
HOLDS = Gauge("musicsplit_rollout_analysis_holds",
              "Consecutive analyses held for lack of evidence at the current step", LABELS)
OUTCOMES = Counter("musicsplit_rollouts", "Versions that left a rollout, by outcome "
                   "(promoted, rolledBack, aborted, superseded, failed, interrupted)", (*LABELS, "outcome"))
ANALYSES = Counter("musicsplit_rollout_analyses", "Canary analyses, by verdict (pass, fail, hold)",
                   (*LABELS, "result"))
FAILED = Gauge("musicsplit_rollout_failed_analyses",
               "Failed analyses of the canary in flight, toward spec.analysis.threshold", LABELS)
DEADLINE = Counter("musicsplit_rollout_hold_deadline_exceeded",
                   "Canaries held past spec.rollout.holdDeadline (then rolled back or escalated)", LABELS)
WEBHOOKS = Counter("musicsplit_rollout_webhooks", "Webhook calls, by type and outcome (ok, rejected, timeout, "
                   "error, notAllowed, dropped)", (*LABELS, "type", "outcome"))
HOOK_OUTCOMES = (*HOOK_RESULTS, "dropped")  # dropped: a notification past the worker's queue bound
GOLDEN_SDR = Gauge("musicsplit_golden_sdr_db",
                   "Golden-set SDR (dB) of a model version, per stem and their mean (stem=mean); role current is "
                   "the newest version probed, previous the one it replaces; serving the stable version's last continuous "
                   "verification, release what the same version scored at its release", (*LABELS, "model_version", "stem",
                                                                                "role"))
# (namespace, name) -> the golden series set now, so a tick removes the ones gone.
_golden: dict[tuple[str, str], set[tuple[str, str, str]]] = {}


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr)


def record(namespace: str, name: str, old: dict, new: dict, golden_set: str = "builtin") -> None:
    """Update the gauges from the new status; count history entries it added."""
    phase = new.get("phase")
    for p in PHASES:
        PHASE.labels(namespace, name, p).set(1 if p == phase else 0)
    WEIGHT.labels(namespace, name).set(new.get("canaryWeight") or 0)
    HOLDS.labels(namespace, name).set(new.get("holds") or 0)
    FAILED.labels(namespace, name).set(new.get("failedAnalyses") or 0)
    DEADLINE.labels(namespace, name)  # at 0 from the start: an alert sees its first increase
    for h in history_added(old, new):
        OUTCOMES.labels(namespace, name, h.get("outcome", "unknown")).inc()
    _record_golden(namespace, name, {**golden_series(new, golden_set), **verification_series(new, golden_set)})


def _record_golden(namespace: str, name: str, series: dict[str, dict]) -> None:
    """At most one version per role (bounded: the canary and the stable; serving and release are the stable)."""
    now = {(role, s["version"], stem): sdr for role, s in series.items() for stem, sdr in s["sdr"].items()}
    for role, version, stem in _golden.get((namespace, name), set()) - set(now):
        GOLDEN_SDR.remove(namespace, name, version, stem, role)
    for (role, version, stem), sdr in now.items():
        GOLDEN_SDR.labels(namespace, name, version, stem, role).set(sdr)
    _golden[(namespace, name)] = set(now)


def analysed(namespace: str, name: str, result: str) -> None:
    ANALYSES.labels(namespace, name, result).inc()


def posted(namespace: str, name: str, events) -> None:
    """Count what the tick's Events say happened (the hold deadline, either way)."""
    for _, reason, _ in events:
        if reason == "HoldDeadlineExceeded":
            DEADLINE.labels(namespace, name).inc()


def webhook_called(namespace: str, name: str, type_: str, outcome: str) -> None:
    WEBHOOKS.labels(namespace, name, type_, outcome).inc()


def forget(namespace: str, name: str) -> None:
    """A deleted SeparationModel's series go away (bounded cardinality)."""
    series = ([(PHASE, (namespace, name, p)) for p in PHASES]
              + [(m, (namespace, name)) for m in (WEIGHT, HOLDS, FAILED, DEADLINE)]
              + [(WEBHOOKS, (namespace, name, t, o)) for t in get_args(HookType) for o in HOOK_OUTCOMES])
    for metric, labels in series:
        try:
            metric.remove(*labels)
        except KeyError:
            pass
    _record_golden(namespace, name, {})

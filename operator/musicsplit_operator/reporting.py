"""What became of a registry release, written back to its MLflow model version.

For a release that came from MLflow (registry.py), the operator sets tags on
that model version:

- as soon as the golden-set probe has measured it: `musicsplit.golden_sdr_db.mean`,
  `musicsplit.golden_sdr_db.<stem>`, `musicsplit.golden_set` (which sets),
  `musicsplit.golden_sdr_measured_at`;
- when its rollout ends (a history entry): `musicsplit.rollout.outcome`
  (promoted, rolledBack, aborted, superseded, failed, interrupted),
  `musicsplit.rollout.reason`, `musicsplit.rollout.started_at`,
  `musicsplit.rollout.finished_at`, `musicsplit.rollout.separation_model`
  (namespace/name), its golden SDR, and from Prometheus, over its users'
  requests during the rollout, `musicsplit.latency_p99_seconds` and
  `musicsplit.cost_per_audio_minute_usd` (left out without data).

`reports_due` (pure) says what status has that MLflow has not been told yet;
a `ReportWorker` thread writes it and records each report's key in
`status.registryReports.done` (its own status key), or the error in
`status.registryReports.error` and tries again after `retry_s`. The ticks
never wait for MLflow. MLflow sets one tag per request, so each report ends
with its marker tag (`musicsplit.rollout.outcome`,
`musicsplit.golden_sdr_measured_at`): a reader that sees it sees the whole
report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from . import prometheus
from .analysis import canary_record, stable_record
from .registry import RegistryError, registry_failure
from .status import iso, parse_time
from .workers import KeyedPool

log = logging.getLogger(__name__)

STATUS_KEY = "registryReports"
RECENT = 10  # history entries looked at: older unreported outcomes are given up
DONE_KEPT = 32  # report keys remembered in status
MIN_WINDOW_S = 60.0
REASON_CHARS = 500
# Written last: their presence says the rest of the report is there.
MARKERS = ("musicsplit.golden_sdr_measured_at", "musicsplit.rollout.outcome")

# Writes {status key: value} into the SeparationModel (namespace, name)'s status.
StatusWriter = Callable[[str, str, dict], None]


@dataclass(frozen=True)
class Report:
    key: str  # what it reports, once: recorded in status when written
    model_name: str
    model_version: str  # MLflow's
    tags: dict[str, str]
    # (release version, rollout started, ended): Prometheus' figures over it
    span: tuple[str, str | None, str] | None = None


@dataclass(frozen=True)
class ReportJob:
    namespace: str
    name: str
    reports: tuple[Report, ...]
    done: tuple[str, ...] = ()  # report keys status already holds, oldest first
    prometheus_url: str | None = None  # None: no figures (the operator may not query the model's Prometheus)
    namespace_label: str = "namespace"


def golden_tags(result: dict | None) -> dict[str, str]:
    """A golden-set result (a probe record, or a history entry's goldenSdr) as tags."""
    if not result:
        return {}
    mean = result.get("meanSdr", result.get("mean"))
    if mean is None:
        return {}
    tags = {"musicsplit.golden_sdr_db.mean": f"{mean:.4f}",
            "musicsplit.golden_set": str(result.get("goldenSet", "builtin"))}
    tags.update({f"musicsplit.golden_sdr_db.{stem}": f"{v:.4f}" for stem, v in (result.get("perStem") or {}).items()})
    return tags


def _stable_registry(status: dict) -> dict | None:
    for h in reversed(status.get("history") or []):
        if (h.get("version"), h.get("storageUri")) == (status.get("stableVersion"), status.get("stableStorageUri")):
            return h.get("registry") if h.get("outcome") == "promoted" else None
    return None


def reports_due(status: dict, namespace: str, name: str, golden_set: str = "builtin") -> list[Report]:
    """What MLflow has not been told yet: ended rollouts of registry releases,
    and the golden SDR of the registry releases being served."""
    done = (status.get(STATUS_KEY) or {}).get("done") or {}
    out = []
    for h in (status.get("history") or [])[-RECENT:]:
        reg = h.get("registry")
        if not reg:
            continue
        key = f"outcome/{reg['name']}/{reg['version']}/{h['outcome']}/{h['at']}"
        if key in done:
            continue
        tags = {"musicsplit.rollout.outcome": h["outcome"], "musicsplit.rollout.finished_at": h["at"],
                "musicsplit.rollout.reason": (h.get("reason") or "")[:REASON_CHARS],
                "musicsplit.rollout.separation_model": f"{namespace}/{name}"}
        if h.get("startedAt"):
            tags["musicsplit.rollout.started_at"] = h["startedAt"]
        tags.update(golden_tags(h.get("goldenSdr")))
        out.append(Report(key, reg["name"], reg["version"], tags, (h["version"], h.get("startedAt"), h["at"])))
    for reg, rec in ((status.get("canaryRegistry"), canary_record(status, golden_set)),
                     (_stable_registry(status), stable_record(status, golden_set))):
        tags = golden_tags(rec) if rec and not rec.get("error") else {}
        if not reg or not tags:
            continue
        key = f"golden/{reg['name']}/{reg['version']}/{rec.get('goldenSet', 'builtin')}/{rec.get('goldenSetDigest')}"
        if key not in done and all(r.key != key for r in out):
            tags["musicsplit.golden_sdr_measured_at"] = rec.get("measuredAt", "")
            out.append(Report(key, reg["name"], reg["version"], tags))
    return out


class ReportWorker:
    """One thread writing reports to MLflow, one job per SeparationModel at a
    time; after a failure, that object's next job waits `retry_s`."""

    def __init__(self, write: StatusWriter, connect: Callable[[], object], *, retry_s: float = 60.0,
                 prometheus_timeout_s: float = 10.0):
        self._write, self._connect = write, connect
        self._retry_s, self._prom_timeout = retry_s, prometheus_timeout_s
        self._pool = KeyedPool(1, "registry-report")
        self._lock = self._pool.lock
        self._failed_at: dict[tuple[str, str], float] = {}
        # Keys written, per object: a tick that read status before they landed asks again.
        self._written: dict[tuple[str, str], set[str]] = {}

    def submit(self, job: ReportJob) -> bool:
        key = (job.namespace, job.name)
        with self._lock:
            reports = tuple(r for r in job.reports if r.key not in self._written.get(key, set()))
            failed = self._failed_at.get(key)
            if not reports or (failed is not None and time.monotonic() - failed < self._retry_s):
                return False
            if not self._pool.claim(key):
                return False
        return self._pool.submit(key, self._run, ReportJob(job.namespace, job.name, reports, job.done,
                                                           job.prometheus_url, job.namespace_label), admitted=True)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._written.pop((namespace, name), None)
            self._failed_at.pop((namespace, name), None)

    def _figures(self, job: ReportJob, span) -> dict[str, str]:
        version, started, ended = span
        end, start = parse_time(ended), parse_time(started)
        if job.prometheus_url is None or end is None:
            return {}
        window = max((end - start).total_seconds() if start else 0.0, MIN_WINDOW_S)
        try:
            figures = prometheus.release_figures(
                prometheus_url=job.prometheus_url, model=job.name, version=version, namespace=job.namespace,
                window_s=window, at=end.timestamp(), namespace_label=job.namespace_label,
                timeout_s=self._prom_timeout)
        except prometheus.PrometheusUnavailable as e:
            if e.reason == prometheus.UNREACHABLE:
                raise RegistryError(f"Prometheus, for the release's latency and cost: {e}") from None
            log.warning("no latency/cost for %s/%s %s: %s", job.namespace, job.name, version, e)
            return {}
        names = {"latencyP99Seconds": "musicsplit.latency_p99_seconds",
                 "costPerAudioMinuteUsd": "musicsplit.cost_per_audio_minute_usd"}
        return {names[k]: f"{v:.6g}" for k, v in figures.items()}

    def _run(self, job: ReportJob) -> None:
        key = (job.namespace, job.name)
        written: dict[str, str] = {}
        error = None
        try:
            mlflow = self._connect()
            for report in job.reports:
                tags = {**report.tags, **(self._figures(job, report.span) if report.span else {})}
                for tag, value in sorted(tags.items(), key=lambda kv: kv[0] in MARKERS):
                    try:
                        mlflow.set_model_version_tag(report.model_name, report.model_version, tag, value)
                    except Exception as e:  # noqa: BLE001 - MlflowException, requests' errors
                        raise registry_failure(e, f"writing to {report.model_name} version "
                                                  f"{report.model_version}") from None
                written[report.key] = iso(datetime.now(timezone.utc))
                log.info("registry: %s written to MLflow", report.key)
        except RegistryError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - the registry client failing to start is a report error too
            error = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        finally:
            with self._lock:
                self._written.setdefault(key, set()).update(written)
                if error:
                    self._failed_at[key] = time.monotonic()
                else:
                    self._failed_at.pop(key, None)
        if error:
            log.warning("registry write-back of %s/%s: %s", job.namespace, job.name, error)
        order = [k for k in job.done if k not in written] + list(written)
        dropped = {k: None for k in order[:-DONE_KEPT]}  # status keeps the newest DONE_KEPT
        patch = {STATUS_KEY: {"done": {**dropped, **written},
                              "error": error, "errorAt": iso(datetime.now(timezone.utc)) if error else None}}
        try:
            self._write(job.namespace, job.name, patch)
        except Exception as e:  # noqa: BLE001 - MLflow has them; the next tick's reports repeat them harmlessly
            log.warning("registry write-back state of %s/%s not recorded: %s", job.namespace, job.name, e)

    def shutdown(self) -> None:
        self._pool.shutdown()

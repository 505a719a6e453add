"""Continuous verification: the serving version scored on its golden set
again, on a schedule, after it was promoted.

A release is scored on the golden set once, when it is rolled out (probe.py:
`status.probe`, `status.goldenBaseline`). The same release can separate worse
later without any change to the SeparationModel: a node with a broken GPU, a
precision change in the runtime, an image rebuilt under the same tag. Every
`spec.analysis.goldenSet.verifyEvery` (default 1h, 0: never) while the phase
is Succeeded, the tick asks (`due`, pure) and a `VerifyWorker` (off the
reconcile path, like the probe) scores the serving URL again and writes
`status.quality`:

    version, storageUri, goldenSet, goldenSetDigest: what was measured
    meanSdr, perStem, sets, perItem, items, servedVersion, startedAt,
    measuredAt: the last successful measurement (probe.run_target's fields)
    release: {meanSdr, perStem, measuredAt, source}: what the same release
        scored when it was released (source `release`), or, when the set's
        contents changed since, at its first verification on the new contents
        (source `firstVerification`)
    dropDb: release.meanSdr - meanSdr
    checkedAt: the last attempt; error, errorAt: the last attempt failed
        (the last successful scores stay)

metrics.py exports it as musicsplit_golden_sdr_db{role="serving"} and
{role="release"} (one version each), and MusicsplitGoldenSDRDroppedInServing
(alerts/operator.rules.yaml) fires on the difference.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from . import goldenset, probe
from .analysis import stable_record
from .router import Observed, TrafficMode, traffic_mode
from .scheduler import ProbeJob, ProbeTarget
from .spec import GoldenSetSpec, SeparationModelSpec
from .status import SUCCEEDED, iso, parse_time
from .workers import KeyedPool

log = logging.getLogger(__name__)

STATUS_KEY = "quality"
ROLE = "serving"
SCORES = ("meanSdr", "perStem", "sets", "perItem", "items", "servedVersion", "startedAt", "measuredAt",
          "goldenSetDigest")


@dataclass(frozen=True)
class VerifyJob:
    namespace: str
    name: str
    target: ProbeTarget  # role "serving": the stable release at the serving URL
    every_s: float
    uid: str | None = None
    golden_set: GoldenSetSpec = field(default_factory=GoldenSetSpec)
    release: dict | None = None  # the release's own golden-set record (status.goldenBaseline or probe)
    last: dict | None = None  # status.quality as the tick read it

    def probe_job(self) -> ProbeJob:
        """The same job in the probe's shape (the set loaders take that)."""
        return ProbeJob(self.namespace, self.name, (self.target,), self.uid, self.golden_set)


def _same_release(rec: dict | None, version: str, storage_uri: str, ref: str) -> bool:
    return bool(rec) and rec.get("version") == version and rec.get("storageUri") == storage_uri \
        and rec.get("goldenSet", "builtin") == ref


def due(spec: SeparationModelSpec, status: dict, obs: Observed, now: datetime, namespace: str, name: str,
        uid: str | None = None, mode: TrafficMode | None = None) -> VerifyJob | None:
    """The verification to run now, or None: the version serving alone
    (Succeeded, KServe serving its storage URI) has its release score, and
    its last check is `verifyEvery` old (or it has none)."""
    golden = spec.analysis.golden_set
    every = golden.verify_every_s
    if every <= 0 or not golden.enabled or status.get("phase") != SUCCEEDED:
        return None
    version, uri = status.get("stableVersion"), status.get("stableStorageUri")
    if not version or not obs.ready or obs.storage_uri != uri:
        return None
    release = stable_record(status, golden.ref)
    if release is None or release.get("error") or release.get("meanSdr") is None:
        return None  # the release is scored first (scheduler.probe_due); that is the reference
    last = status.get(STATUS_KEY)
    if not _same_release(last, version, uri, golden.ref):
        last = None
    since = parse_time((last or {}).get("checkedAt") or release.get("measuredAt"))
    if since is not None and (now - since).total_seconds() < every:
        return None
    url = (mode or traffic_mode(spec)).serving_url(obs)
    if not url:
        return None
    return VerifyJob(namespace, name, ProbeTarget(ROLE, version, uri, url), every, uid, golden, release, last)


def _reference(release: dict | None, last: dict | None, rec: dict) -> dict:
    """What `rec` compares with: the release's own score on the same set
    contents, else the first verification's on these contents, else `rec`."""
    digest = rec.get("goldenSetDigest")
    if release and release.get("meanSdr") is not None and release.get("goldenSetDigest") == digest:
        src, source = release, "release"
    elif last and (last.get("release") or {}).get("goldenSetDigest") == digest:
        return last["release"]
    else:
        src, source = rec, "firstVerification"
    return {"meanSdr": src["meanSdr"], "perStem": dict(src.get("perStem") or {}), "measuredAt": src.get("measuredAt"),
            "goldenSetDigest": digest, "source": source}


def quality_record(job: VerifyJob, rec: dict, checked_at: datetime) -> dict:
    """status.quality from one measurement (probe.run_target's record)."""
    base = {"version": job.target.version, "storageUri": job.target.storage_uri, "goldenSet": job.golden_set.ref,
            "checkedAt": iso(checked_at)}
    if rec.get("error"):
        kept = {k: v for k, v in (job.last or {}).items() if k in (*SCORES, "release", "dropDb")}
        return {**base, **kept, "error": rec["error"], "errorAt": rec.get("measuredAt") or iso(checked_at)}
    out = {**base, **{k: rec[k] for k in SCORES if k in rec}}
    out["release"] = _reference(job.release, job.last, rec)
    out["dropDb"] = round(out["release"]["meanSdr"] - rec["meanSdr"], 4)
    return out


def series(status: dict, golden_set: str = "builtin") -> dict[str, dict]:
    """musicsplit_golden_sdr_db's `serving` and `release` roles from
    status.quality (golden_series' shape), for the stable version only."""
    q = status.get(STATUS_KEY)
    if not _same_release(q, status.get("stableVersion"), status.get("stableStorageUri"), golden_set) \
            or q.get("meanSdr") is None:
        return {}
    rel = q.get("release") or {}
    out = {ROLE: {"version": q["version"], "sdr": {**(q.get("perStem") or {}), "mean": q["meanSdr"]}}}
    if rel.get("meanSdr") is not None:
        out["release"] = {"version": q["version"], "sdr": {**(rel.get("perStem") or {}), "mean": rel["meanSdr"]}}
    return out


class VerifyWorker:
    """At most `workers` verifications at a time, one per SeparationModel; a
    job for a release checked less than its interval ago is refused (a tick
    that read status just before the result landed asks again)."""

    def __init__(self, write: probe.StatusWriter, *, workers: int = 1, timeout_s: float = 300.0,
                 load_set: Callable[[ProbeJob], AbstractContextManager] = probe.builtin_only,
                 clock: Callable[[], float] = time.monotonic):
        self._write, self._timeout, self._load_set, self._clock = write, timeout_s, load_set, clock
        self._pool = KeyedPool(workers, "golden-verify")
        self._lock = self._pool.lock
        # (namespace, name) -> ((uid, version, storageUri, set), monotonic time the last check ended)
        self._checked: dict[tuple[str, str], tuple[tuple, float]] = {}

    def submit(self, job: VerifyJob) -> bool:
        key = (job.namespace, job.name)
        release = (job.uid, job.target.version, job.target.storage_uri, job.golden_set.ref)
        with self._lock:
            was, at = self._checked.get(key, (None, 0.0))
            if (was == release and self._clock() - at < job.every_s) or not self._pool.claim(key):
                return False
        return self._pool.submit(key, self._run, job, admitted=True)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._checked.pop((namespace, name), None)

    def busy(self, namespace: str, name: str) -> bool:
        with self._lock:
            return self._pool.running((namespace, name))

    def _run(self, job: VerifyJob) -> None:
        try:
            with self._load_set(job.probe_job()) as golden:
                rec = probe.run_target(job.target, job.name, self._timeout, golden=golden)
        except goldenset.GoldenSetError as e:
            rec = probe.failed_load(job.target, job.golden_set.ref, e)
        out = quality_record(job, rec, datetime.now(timezone.utc))
        log.info("golden-set verification of %s/%s %s: %s", job.namespace, job.name, job.target.version,
                 out.get("error") or f"mean SDR {out['meanSdr']} dB ({out['dropDb']:+} dB below its release)")
        try:
            self._write(job.namespace, job.name, {STATUS_KEY: out})
        except Exception as e:  # noqa: BLE001 - lost; the next tick asks again
            log.warning("golden-set verification of %s/%s not written: %s", job.namespace, job.name, e)
            return
        with self._lock:
            self._checked[(job.namespace, job.name)] = (
                (job.uid, job.target.version, job.target.storage_uri, job.golden_set.ref), self._clock())

    def shutdown(self) -> None:
        self._pool.shutdown()

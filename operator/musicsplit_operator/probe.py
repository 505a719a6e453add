"""The golden-set probe, off the reconcile path.

A probe separates the golden set through a served revision (musicsplit.evaluate
over the v2 client) and scores it: minutes of inference on a slow model, so
the reconcile tick never waits for one. The tick submits a `ProbeJob`
(`scheduler.probe_due` decides which) to a `ProbeWorker`, a bounded thread
pool shared by all SeparationModels, and reads the results back from status,
where the worker writes them: `status.probe` for the canary,
`status.goldenBaseline` for the stable version.

Each result is a record: version, storageUri, goldenSet (which sets: the
spec's `GoldenSetSpec.ref`), goldenSetDigest (what they held), meanSdr,
perStem, sets (mean SDR per set: the built-in set's real excerpts are
`builtin-real`), perItem (SDR per stem of each track), servedVersion, items, startedAt,
measuredAt; or error (meanSdr absent) when the probe failed, with
errorReason when the golden set itself is at fault (goldenset.py's reasons).
The job's golden set is loaded once (`load_set`: the ConfigMap read, the
storage URI fetched) and its tracks decoded one by one as they are sent.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable

from . import goldenset
from .goldenset import GoldenSet
from .scheduler import ProbeJob, ProbeTarget
from .status import iso
from .workers import KeyedPool

log = logging.getLogger(__name__)

PROBE_SOURCE = "probe"  # X-Musicsplit-Source: the predictor counts these apart from users
STATUS_KEY = {"canary": "probe", "stable": "goldenBaseline"}
SETTLE_S = 60.0  # how long a URL may keep answering with the previous version

# Writes {status key: record} into the SeparationModel (namespace, name)'s status.
StatusWriter = Callable[[str, str, dict], None]


def golden_report(url: str, model: str, version: str, timeout_s: float = 300.0, *,
                  golden: GoldenSet | None = None, settle_s: float = SETTLE_S, poll_s: float = 2.0):
    """The model at `url` scored on the golden set (musicsplit.evaluate's
    report; the built-in set unless `golden` names others). Deterministic: a
    fixed set, no random shift (shifts=0), so one version always scores the
    same and a difference between versions is the models'. Tracks are decoded
    one at a time, as they are sent.

    The first item says which version answers. Right after a RawDeployment
    switch the URL may still reach the old pods for a moment: the first item
    is sent again every `poll_s` for up to `settle_s` before that is an error
    (a score of another version says nothing about this one)."""
    from musicsplit.evaluate import EvalReport, evaluate
    from musicsplit.v2client import V2Client

    tracks = (golden or goldenset.builtin()).tracks

    def score(client, track):
        item = track.load()
        try:
            return evaluate(client, model, [item], shifts=0, source=PROBE_SOURCE).items
        except ValueError as e:  # no stem of the track is one the model separates
            raise goldenset.GoldenSetError(f"track {track.name}: {e}") from None

    deadline = time.monotonic() + settle_s
    with V2Client(url, timeout=timeout_s) as client:
        while True:
            first = score(client, tracks[0])
            if first[0].model_version in (None, version):
                break
            if time.monotonic() + poll_s > deadline:
                raise LookupError(f"answered by model_version {first[0].model_version}, not {version}")
            time.sleep(poll_s)
        items = first + [i for t in tracks[1:] for i in score(client, t)]
    report = EvalReport(model, items)
    if report.model_version not in (None, version):  # the version changed under the probe
        raise LookupError(f"answered by model_version {report.model_version}, not {version}")
    return report


def _error(exc: BaseException) -> str:
    from musicsplit.v2client import V2Error

    if isinstance(exc, V2Error):
        # The predictor's error says what it refused; one short line of it
        # (a proxy in between may answer with a whole page).
        return f"HTTP {exc.status} from the predictor: {' '.join(exc.message.split())[:200]}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _by_set(golden: GoldenSet, report) -> dict:
    """Mean SDR per set the tracks came from (pooled sets: which one moved)."""
    from musicsplit.evaluate import EvalReport

    out = {}
    for source in dict.fromkeys(t.source for t in golden.tracks):
        part = EvalReport(report.model, [i for t, i in zip(golden.tracks, report.items) if t.source == source])
        out[source] = {"items": len(part.items), "meanSdr": round(part.mean_sdr, 4)}
    return out


def run_target(target: ProbeTarget, model: str, timeout_s: float, *, golden: GoldenSet | None = None,
               settle_s: float = SETTLE_S) -> dict:
    """Probe one release; the record for status (errors included, never raised)."""
    started = datetime.now(timezone.utc)
    golden = golden or goldenset.builtin()
    rec: dict = {"version": target.version, "storageUri": target.storage_uri, "goldenSet": golden.ref,
                 "goldenSetDigest": golden.digest, "startedAt": iso(started)}
    try:
        if target.url is None:
            raise LookupError(target.missing or "no URL to probe")
        report = golden_report(target.url, model, target.version, timeout_s, golden=golden, settle_s=settle_s)
        rec.update(meanSdr=round(report.mean_sdr, 4), perStem={k: round(v, 4) for k, v in report.per_stem.items()},
                   servedVersion=report.model_version, items=len(report.items), sets=_by_set(golden, report),
                   perItem={i.name: {k: round(v, 4) for k, v in i.sdr.items()} for i in report.items})
    except goldenset.GoldenSetError as e:
        rec.update(error=str(e), errorReason=e.reason)
    except LookupError as e:
        rec["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - any failure is the probe's result: a hold, with its reason
        rec["error"] = _error(e)
    rec["measuredAt"] = iso(datetime.now(timezone.utc))
    return rec


def failed_load(target: ProbeTarget, ref: str, error: goldenset.GoldenSetError) -> dict:
    """The record of a release not probed because its golden set is unusable."""
    now = iso(datetime.now(timezone.utc))
    return {"version": target.version, "storageUri": target.storage_uri, "goldenSet": ref, "startedAt": now,
            "error": str(error), "errorReason": error.reason, "measuredAt": now}


# The job's golden set, loaded (ConfigMap read, storage fetched) and checked;
# raises GoldenSetError. A context manager: the set's files stay while it is open.
SetLoader = Callable[[ProbeJob], AbstractContextManager[GoldenSet]]


@contextmanager
def builtin_only(job: ProbeJob):
    """The loader of an operator that reads no ConfigMaps and fetches nothing."""
    yield goldenset.load(job.golden_set, job.namespace)


class ProbeWorker:
    """At most `workers` probes at a time, one per SeparationModel: a job
    submitted while that object's last one runs is refused (the next tick asks
    again). A job measures its targets in order and writes each result as soon
    as it has it."""

    def __init__(self, write: StatusWriter, *, workers: int = 2, timeout_s: float = 300.0,
                 load_set: SetLoader = builtin_only):
        self._write, self._timeout, self._load_set = write, timeout_s, load_set
        self._pool = KeyedPool(workers, "golden-probe")
        self._lock = self._pool.lock
        # (namespace, name, role) -> ((uid, version, storageUri, golden set), measuredAt)
        # last measured: a tick that read status just before the result landed
        # would ask again. The uid tells a SeparationModel deleted and created
        # again apart; a target that `replaces` that very result asks for a new
        # one on purpose (the set changed since).
        self._measured: dict[tuple[str, str, str], tuple[tuple, str]] = {}

    def submit(self, job: ProbeJob) -> bool:
        """Queue the job unless one for the same object is queued or running;
        targets this worker has measured already are dropped."""
        key = (job.namespace, job.name)

        def wanted(t: ProbeTarget) -> bool:
            release, at = self._measured.get((*key, t.role), (None, None))
            return release != (job.uid, t.version, t.storage_uri, job.golden_set.ref) or t.replaces == at

        with self._lock:
            targets = tuple(t for t in job.targets if wanted(t))
            if not targets or not self._pool.claim(key):
                return False
        return self._pool.submit(key, self._run, replace(job, targets=targets), admitted=True)

    def forget(self, namespace: str, name: str) -> None:
        """A deleted SeparationModel's memory goes (bounded by the live objects)."""
        with self._lock:
            for role in STATUS_KEY:
                self._measured.pop((namespace, name, role), None)

    def busy(self, namespace: str, name: str) -> bool:
        with self._lock:
            return self._pool.running((namespace, name))

    def _run(self, job: ProbeJob) -> None:
        try:
            with self._load_set(job) as golden:
                for target in job.targets:
                    self._record(job, target, run_target(target, job.name, self._timeout, golden=golden))
        except goldenset.GoldenSetError as e:
            log.warning("golden set of %s/%s unusable: %s", job.namespace, job.name, e)
            for target in job.targets:
                self._record(job, target, failed_load(target, job.golden_set.ref, e))
        except Exception:  # noqa: BLE001 - a bug must not kill the worker thread silently
            log.exception("golden-set probe of %s/%s failed", job.namespace, job.name)

    def _record(self, job: ProbeJob, target: ProbeTarget, rec: dict) -> None:
        log.info("golden-set probe of %s/%s %s %s: %s", job.namespace, job.name, target.role,
                 target.version, rec.get("error") or f"mean SDR {rec['meanSdr']} dB")
        fields = {STATUS_KEY[target.role]: rec}
        if target.role == "canary" and job.baseline is not None:
            fields[STATUS_KEY["stable"]] = job.baseline  # the promoted release's own result, kept
        try:
            self._write(job.namespace, job.name, fields)
        except Exception as e:  # noqa: BLE001 - the result is lost; the next tick asks for it again
            log.warning("golden-set probe result of %s/%s not written: %s", job.namespace, job.name, e)
            return
        if "error" not in rec:
            with self._lock:
                self._measured[(job.namespace, job.name, target.role)] = (
                    (job.uid, target.version, target.storage_uri, job.golden_set.ref), rec["measuredAt"])

    def shutdown(self) -> None:
        self._pool.shutdown()

"""Continuous verification as plain functions: when the serving version is
scored again (`due`), what status.quality says (`quality_record`), what
musicsplit_golden_sdr_db exports from it (`series`, metrics.record), and
the worker's one-check-per-interval memory."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from musicsplit.localstack import wait_until
from musicsplit.operator import metrics, verification
from musicsplit.operator.goldenset import GoldenSet
from musicsplit.operator.scheduler import ProbeTarget
from musicsplit.operator.status import iso
from musicsplit.operator.verification import VerifyJob, VerifyWorker, due, quality_record, series
from tests.operator.builders import STABLE, T0, V1, serving, spec

RELEASE = {"version": "1.0.0", "storageUri": V1["storageUri"], "goldenSet": "builtin", "goldenSetDigest": "d1",
           "meanSdr": 6.0, "perStem": {"drums": 7.0, "bass": 5.0}, "measuredAt": T0.isoformat()}
PROMOTED = {**STABLE, "goldenBaseline": RELEASE}
OBS = serving(V1["storageUri"])


def sp(every="1h", **golden):
    return spec(model=V1, analysis={"goldenSet": {"verifyEvery": every, **golden}})


def at(**delta):
    return T0 + timedelta(**delta)


def measured(mean, digest="d1", **stems):
    return {"version": "1.0.0", "storageUri": V1["storageUri"], "goldenSet": "builtin", "goldenSetDigest": digest,
            "meanSdr": mean, "perStem": stems or {"drums": mean + 1, "bass": mean - 1}, "items": 6,
            "startedAt": at(hours=1).isoformat(), "measuredAt": at(hours=1, minutes=1).isoformat()}


def test_the_serving_version_is_checked_again_once_its_interval_has_passed():
    assert due(sp(), PROMOTED, OBS, at(minutes=59), "ml", "m") is None  # scored at its release an hour ago
    job = due(sp(), PROMOTED, OBS, at(hours=1), "ml", "m", "uid-1")
    assert job.target == ProbeTarget("serving", "1.0.0", V1["storageUri"], "http://c")
    assert job.release is RELEASE and job.every_s == 3600 and job.uid == "uid-1"
    # After a check, the next one counts from it (failed or not).
    checked = {**PROMOTED, "quality": {**measured(5.9), "checkedAt": at(hours=1).isoformat()}}
    assert due(sp(), checked, OBS, at(hours=1, minutes=30), "ml", "m") is None
    assert due(sp(), checked, OBS, at(hours=2), "ml", "m") is not None
    assert due(sp("10m"), checked, OBS, at(hours=1, minutes=10), "ml", "m") is not None
    # A quality record of another release (the one before) is no check of this one.
    older = {**checked, "quality": {**checked["quality"], "version": "0.9.0"}}
    assert due(sp(), older, OBS, at(hours=1, minutes=30), "ml", "m") is not None


@pytest.mark.parametrize("why, make", [
    ("turned off", lambda: (sp("0"), PROMOTED, OBS)),
    ("no golden set", lambda: (sp(builtin=False), PROMOTED, OBS)),
    ("a rollout in flight", lambda: (sp(), {**PROMOTED, "phase": "Progressing"}, OBS)),
    ("KServe serves another release", lambda: (sp(), PROMOTED, serving("gs://m/htdemucs/0.9.0"))),
    ("not ready", lambda: (sp(), PROMOTED, serving(V1["storageUri"], ready=False))),
    ("a canary shares the traffic", lambda: (sp(), PROMOTED, serving(V1["storageUri"], pct=10))),
    ("no release score yet", lambda: (sp(), STABLE, OBS)),
    ("the release score failed", lambda: (sp(), {**STABLE, "goldenBaseline": {**RELEASE, "meanSdr": None,
                                                                              "error": "HTTP 500"}}, OBS)),
    ("its release score is of another set", lambda: (sp(real_music=False), PROMOTED, OBS)),
])
def test_no_check_while_there_is_nothing_to_compare_or_nothing_serving_alone(why, make):
    s, status, obs = make()
    assert due(s, status, obs, at(days=1), "ml", "m") is None, why


def job(last=None, release=RELEASE):
    return VerifyJob("ml", "m", ProbeTarget("serving", "1.0.0", V1["storageUri"], "http://c"), 3600.0, "uid-1",
                     release=release, last=last)


def test_a_check_is_recorded_against_what_the_release_scored():
    q = quality_record(job(), measured(4.5), at(hours=1))
    assert q["meanSdr"] == 4.5 and q["dropDb"] == 1.5 and q["checkedAt"] == iso(at(hours=1))
    assert q["release"] == {"meanSdr": 6.0, "perStem": {"drums": 7.0, "bass": 5.0}, "measuredAt": T0.isoformat(),
                            "goldenSetDigest": "d1", "source": "release"}
    assert q["version"] == "1.0.0" and q["goldenSet"] == "builtin" and q["items"] == 6


def test_a_failed_check_says_why_and_keeps_the_last_scores():
    ok = quality_record(job(), measured(5.8), at(hours=1))
    failed = quality_record(job(last=ok), {"error": "ConnectError: refused", "measuredAt": at(hours=2).isoformat()},
                            at(hours=2))
    assert failed["error"] == "ConnectError: refused" and failed["errorAt"] == at(hours=2).isoformat()
    assert failed["meanSdr"] == 5.8 and failed["dropDb"] == ok["dropDb"] and failed["checkedAt"] == iso(at(hours=2))
    # The next success clears the error.
    assert "error" not in quality_record(job(last=failed), measured(5.9), at(hours=3))


def test_a_set_whose_contents_changed_compares_with_its_first_check_on_them():
    """A ConfigMap edited (or the built-in set's new version) after the release:
    the release's score is of other tracks, so the first check on the new
    contents becomes the reference, and later checks compare with it."""
    first = quality_record(job(), measured(3.0, digest="d2"), at(hours=1))
    assert first["release"]["source"] == "firstVerification" and first["dropDb"] == 0
    later = quality_record(job(last=first), measured(1.5, digest="d2"), at(hours=2))
    assert later["release"]["meanSdr"] == 3.0 and later["dropDb"] == 1.5


def test_a_tick_carries_the_workers_status_quality_unchanged():
    from musicsplit.operator import scheduler

    status = {**PROMOTED, "quality": quality_record(job(), measured(4.5), at(hours=1))}
    assert scheduler.schedule(sp(), status, OBS, at(hours=1, minutes=1)).status["quality"] == status["quality"]


def _sample(role, stem="mean", version="1.0.0"):
    return REGISTRY.get_sample_value("musicsplit_golden_sdr_db", {"namespace": "vq", "name": "m", "role": role,
                                                                  "model_version": version, "stem": stem})


def test_the_serving_score_and_its_release_score_are_exported_for_the_stable_version_only():
    q = quality_record(job(), measured(4.5), at(hours=1))
    status = {**PROMOTED, "quality": q}
    assert series(status)["serving"] == {"version": "1.0.0", "sdr": {"drums": 5.5, "bass": 3.5, "mean": 4.5}}
    assert series(status)["release"]["sdr"]["mean"] == 6.0
    assert series({**status, "stableVersion": "2.0.0"}) == {} and series(status, "configMap:x") == {}
    try:
        metrics.record("vq", "m", {}, status)
        assert (_sample("serving"), _sample("release"), _sample("serving", "drums")) == (4.5, 6.0, 5.5)
        # A new version promoted: the old one's verification series go (bounded).
        metrics.record("vq", "m", status, {**status, "stableVersion": "2.0.0"})
        assert _sample("serving") is None and _sample("release") is None
    finally:
        metrics.forget("vq", "m")


def test_the_worker_checks_a_release_once_per_interval():
    written, clock, gate = [], [0.0], threading.Event()

    @contextmanager
    def no_tracks(_job):
        yield GoldenSet("builtin", "d1", ())  # nothing to send: fails fast, through the real probe code

    worker = VerifyWorker(lambda ns, name, f: (gate.wait(10), written.append(f)), load_set=no_tracks,
                          clock=lambda: clock[0])
    try:
        assert worker.submit(job()) and not worker.submit(job())  # one at a time per object
        gate.set()
        wait_until(lambda: written and not worker.busy("ml", "m"), 10, "the check's result")
        assert written[0]["quality"]["version"] == "1.0.0" and written[0]["quality"]["error"]
        clock[0] = 3599.0
        assert not worker.submit(job())  # a tick that read status before the result landed
        clock[0] = 3600.0
        assert worker.submit(job())
    finally:
        gate.set()
        worker.shutdown()

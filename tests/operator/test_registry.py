"""The registry reference and what status says MLflow must hear, without an
MLflow server: the parsing, when a resolution is (not) tried again, what an
unreachable registry leaves in use, and the write-back plan. The real MLflow
server runs in test_registry_mlflow.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from musicsplit.operator import registry, reporting
from musicsplit.operator.registry import RegistryError, parse_uri, resolve_for_tick
from musicsplit.operator.spec import parse_spec
from tests.operator.builders import T0

UNREACHABLE = "http://127.0.0.1:9"


def test_registry_uris_name_a_version_an_alias_or_a_stage():
    assert parse_uri("mlflow://models/sep/3").version == "3"
    assert parse_uri("mlflow://models/sep@champion").alias == "champion"
    assert parse_uri("mlflow://models/sep/production").stage == "Production"
    for bad, words in (("mlflow://models/sep", "is not mlflow://models/NAME/VERSION"),
                       ("mlflow://runs/abc/model", "is not mlflow://models/NAME/VERSION"),
                       ("mlflow://models/sep/latest", "'latest' is neither a version number nor a stage")):
        with pytest.raises(RegistryError, match=words):
            parse_uri(bad)


def model(uri="mlflow://models/sep@champion", **kw):
    return parse_spec({"model": {"architecture": "htdemucs", "storageUri": uri, **kw}}).model


def tick(m, old, now, **kw):
    args = dict(generation=1, tracking_uri=UNREACHABLE, timeout_s=2, retry_s=60)
    return resolve_for_tick(m, old, now, **{**args, **kw})


def test_without_a_registry_nothing_is_resolved_and_status_says_why():
    res = tick(model(), None, T0, tracking_uri=None)
    assert res.model is None and not res.ok and res.reason == registry.NOT_CONFIGURED
    assert "MUSICSPLIT_OPERATOR_MLFLOW_TRACKING_URI" in res.status["error"]


def test_an_unreachable_registry_is_asked_again_only_after_retry_s():
    res = tick(model(), None, T0)
    assert res.model is None and res.reason == registry.UNREACHABLE
    assert "MLflow could not be asked" in res.message and res.status["attemptedAt"]
    again = tick(model(), res.status, T0 + timedelta(seconds=30), tracking_uri="http://never-asked.invalid")
    assert again.status == res.status  # not tried: the same failure, the same attempt time
    later = tick(model(), res.status, T0 + timedelta(seconds=61))
    assert later.status["attemptedAt"] != res.status["attemptedAt"]


def test_the_last_resolution_stays_in_use_until_a_new_reference_resolves():
    resolved = {"uri": "mlflow://models/sep/3", "modelName": "sep", "modelVersion": "3", "version": "2.0.0",
                "storageUri": "s3://mlflow/3/model", "resolvedAt": "2026-01-01T11:00:00Z",
                "specKey": registry.spec_key(model("mlflow://models/sep/3"))}
    same = tick(model("mlflow://models/sep/3"), resolved, T0)  # resolved before: MLflow not asked
    assert same.ok and same.model.storage_uri == "s3://mlflow/3/model" and same.model.version == "2.0.0"
    assert same.model.registry == {"uri": "mlflow://models/sep/3", "name": "sep", "version": "3"}
    moved = tick(model("mlflow://models/sep@champion"), resolved, T0)  # a new reference, MLflow unreachable
    assert not moved.ok and moved.reason == registry.UNREACHABLE
    assert moved.model.storage_uri == "s3://mlflow/3/model"  # what was rolled out goes on; nothing new starts
    forced = tick(model("mlflow://models/sep/3"), resolved, T0, force=True)  # musicsplit.io/action=resolve
    assert not forced.ok and forced.model.version == "2.0.0"


REG = {"uri": "mlflow://models/sep@champion", "name": "sep", "version": "3"}


def test_what_mlflow_must_hear_is_planned_from_status_once():
    st = {"phase": "Succeeded", "stableVersion": "2.0.0", "stableStorageUri": "s3://m/3",
          "probe": {"version": "2.0.0", "storageUri": "s3://m/3", "meanSdr": 6.5, "perStem": {"vocals": 7.0},
                    "goldenSetDigest": "abc", "measuredAt": "2026-01-01T12:01:00Z"},
          "history": [{"version": "1.0.0", "storageUri": "gs://m/1", "outcome": "promoted", "at": "x"},
                      {"version": "2.0.0", "storageUri": "s3://m/3", "outcome": "promoted", "registry": REG,
                       "at": "2026-01-01T12:10:00Z", "startedAt": "2026-01-01T12:00:00Z", "reason": "passed",
                       "goldenSdr": {"mean": 6.5, "perStem": {"vocals": 7.0}, "goldenSet": "builtin"}}]}
    outcome, golden = reporting.reports_due(st, "ml", "sep")
    assert (outcome.model_name, outcome.model_version) == ("sep", "3")
    assert outcome.tags["musicsplit.rollout.outcome"] == "promoted"
    assert outcome.tags["musicsplit.rollout.separation_model"] == "ml/sep"
    assert outcome.tags["musicsplit.golden_sdr_db.vocals"] == "7.0000"
    assert outcome.span == ("2.0.0", "2026-01-01T12:00:00Z", "2026-01-01T12:10:00Z")
    assert golden.tags["musicsplit.golden_sdr_db.mean"] == "6.5000" and golden.span is None
    done = {**st, "registryReports": {"done": {outcome.key: "t", golden.key: "t"}}}
    assert reporting.reports_due(done, "ml", "sep") == []

"""The spec as the operator reads it: defaults, durations, weights, refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from musicsplit.operator.spec import parse_duration, parse_spec
from tests.operator.builders import V1, spec


def test_durations_and_weights():
    assert parse_duration("1m30s") == 90 and parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("soon")
    assert spec(rollout={"steps": None, "stepWeight": 20, "maxWeight": 60}).rollout.weights() == [20, 40, 60]
    assert parse_spec({"model": V1}).rollout.weights() == [10, 25, 50]


@pytest.mark.parametrize("bad, words", [
    ({"model": {**V1, "storageUri": ""}}, "storageUri"),
    ({"model": {k: v for k, v in V1.items() if k != "storageUri"}}, "storageUri"),
    ({"model": V1, "rollout": {"steps": [50, 10]}}, "increase"),
    ({"model": V1, "rollout": {"steps": [10, 150]}}, "1..100"),
    ({"model": V1, "replicas": {"min": 3, "max": 1}}, "replicas.max"),
    ({"model": V1, "rollout": {"interval": "often"}}, "duration"),
    ({"model": V1, "deploymentMode": "Magic"}, "deploymentMode"),
])
def test_bad_specs_are_refused_with_a_reason(bad, words):
    with pytest.raises(ValidationError) as e:
        parse_spec(bad)
    assert words in str(e.value)


def test_golden_set_names_the_builtin_set_unless_user_sets_are_named():
    assert parse_spec({"model": V1}).analysis.golden_set.ref == "builtin"
    mine = spec(analysis={"goldenSet": {"configMap": "refs"}}).analysis.golden_set
    assert mine.ref == "configMap:refs" and not mine.uses_builtin  # instead of the built-in set
    both = spec(analysis={"goldenSet": {"builtin": True, "storageUri": "s3://g/musdb"}}).analysis.golden_set
    assert both.ref == "builtin+storageUri:s3://g/musdb"
    assert not spec(analysis={"goldenSet": {"builtin": False}}).analysis.golden_set.enabled


def test_golden_set_booleans_stored_before_the_object_still_read():
    """v1alpha1 objects applied while goldenSet was a boolean (docs/adr/0107)."""
    assert spec(analysis={"goldenSet": True}).analysis.golden_set.ref == "builtin"
    assert not spec(analysis={"goldenSet": False}).analysis.golden_set.enabled


def test_the_sdr_drop_limit_moved_into_the_golden_set():
    assert spec(analysis={"goldenSet": {"maxSdrDropDb": 0.3}}).analysis.sdr_drop_limit == 0.3  # wins over 1.0
    assert spec(analysis={"maxSdrDropDb": 0.7}).analysis.sdr_drop_limit == 0.7  # the old place, still read
    assert parse_spec({"model": V1}).analysis.sdr_drop_limit == 1.0


def test_a_registry_model_needs_no_version_and_anything_else_does():
    m = parse_spec({"model": {"architecture": "htdemucs", "storageUri": "mlflow://models/sep@champion"}}).model
    assert m.from_registry and m.version is None and m.registry is None
    release = m.resolved("2.0.0", "s3://mlflow/artifacts/3/model", {"uri": m.storage_uri, "name": "sep",
                                                                     "version": "3"})
    assert (release.version, release.storage_uri, release.registry["version"]) == (
        "2.0.0", "s3://mlflow/artifacts/3/model", "3")
    with pytest.raises(ValidationError, match="model.version is required unless storageUri names an MLflow model"):
        parse_spec({"model": {"architecture": "htdemucs", "storageUri": "gs://m/x"}})
    with pytest.raises(ValidationError, match="goldenSet.storageUri must be a URI"):
        spec(analysis={"goldenSet": {"storageUri": "bucket/golden"}})

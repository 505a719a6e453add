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

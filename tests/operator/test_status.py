"""Status helpers: conditions as Kubernetes keeps them."""

from __future__ import annotations

from datetime import timedelta

from musicsplit.operator import status as s
from tests.operator.builders import T0


def test_conditions_keep_their_transition_time_while_unchanged():
    c = s.set_condition([], "Ready", True, "A", "a", T0)
    c = s.set_condition(c, "Ready", True, "B", "b", T0 + timedelta(hours=1))
    assert c[0]["lastTransitionTime"] == s.iso(T0) and c[0]["reason"] == "B"
    c = s.set_condition(c, "Ready", False, "C", "c", T0 + timedelta(hours=2))
    assert c[0]["lastTransitionTime"] == s.iso(T0 + timedelta(hours=2))

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


def test_history_keeps_each_release_golden_sdr_registry_and_rollout_span():
    from musicsplit.operator import scheduler
    from musicsplit.operator.analysis import judge
    from tests.operator.builders import STABLE, V1, V2, good, serving, spec

    sp = spec()
    registry = {"uri": "mlflow://models/sep@champion", "name": "sep", "version": "3"}
    sp = sp.model_copy(update={"model": sp.model.resolved(V2["version"], V2["storageUri"], registry)})
    plan = scheduler.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    assert plan.status["canaryStartedAt"] == s.iso(T0) and plan.status["canaryRegistry"] == registry
    measured = {**plan.status, "probe": {"version": "2.0.0", "storageUri": V2["storageUri"], "meanSdr": 2.0,
                                         "perStem": {"vocals": 1.5}}}
    later = T0 + timedelta(minutes=3)
    st = scheduler.after_analysis(sp, measured, judge(good(canary_sdr=2.0), sp), later).status
    h = st["history"][-1]
    assert h["outcome"] == "rolledBack" and h["startedAt"] == s.iso(T0) and h["at"] == s.iso(later)
    assert h["registry"] == registry
    assert h["goldenSdr"] == {"mean": 2.0, "perStem": {"vocals": 1.5}, "goldenSet": "builtin"}
    assert "canaryRegistry" not in st and "canaryStartedAt" not in st

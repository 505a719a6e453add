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


def _nulls_in_list_items(value, in_list=False, path="status") -> list[str]:
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls_in_list_items(v, True, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for k, v in value.items()
                for p in ([f"{path}.{k}"] if in_list and v is None else _nulls_in_list_items(v, in_list, f"{path}.{k}"))]
    return []


def test_the_status_written_has_no_nulls_in_list_items():
    """A real API server stores list items without null-valued keys: what kopf
    reads back would differ from what it wrote ("inconsistencies"), every tick."""
    from musicsplit.operator import reconcile, scheduler
    from musicsplit.operator.analysis import Measurements, judge
    from tests.operator.builders import V2, serving, start_canary

    sp, plan = start_canary()  # V2 has no released date: its history entries have none
    held = judge(Measurements(prometheus_error="connection refused"), sp)  # checks without values
    st = scheduler.after_analysis(sp, plan.status, held, T0 + timedelta(seconds=61)).status
    st = scheduler.schedule(sp, st, serving(V2["storageUri"], 10), T0, action="abort").status
    assert any(c.get("value") is None for c in st["lastAnalysis"]["checks"])
    written = reconcile._status_patch({}, s.RolloutStatus.of(st))
    assert "released" not in written["history"][-1] and written["history"][-1]["outcome"] == "aborted"
    assert _nulls_in_list_items(written) == []


def test_typed_status_round_trips_the_json_kubectl_and_the_gateway_read():
    # Keys an older or newer operator wrote, unknown to this one, come back as they were.
    stored = {"phase": "Progressing", "canaryVersion": "2.0.0", "canaryWeight": 10, "stepIndex": 0,
              "conditions": [{"type": "Ready", "status": "True"}], "history": [],
              "endpoints": {"stable": {"version": "1.0.0", "url": "http://s"}},
              "shadow": {"url": "http://c", "percent": 10}, "someOlderKey": {"kept": True}}
    st = s.RolloutStatus.of(stored)
    assert st.canary_weight == 10 and st.endpoints["stable"]["url"] == "http://s"
    assert st.dump() == stored
    # Set by attribute, dumped camelCase; an unset field is absent, never null.
    st.canary_weight, st.step_index, st.hold_started_at = 20, None, s.iso(T0)
    out = st.dump()
    assert out["canaryWeight"] == 20 and out["holdStartedAt"] == s.iso(T0) and "stepIndex" not in out
    assert None not in out.values()


def test_a_tick_carries_what_the_background_workers_wrote_and_drops_what_it_publishes_afresh():
    from musicsplit.operator import scheduler
    from tests.operator.builders import STABLE, V1, serving, spec

    quality = {"version": "1.0.0", "checkedAt": s.iso(T0), "meanSdr": 6.1}
    stored = {**STABLE, "quality": quality, "endpoints": {"stable": {"version": "1.0.0", "url": "http://old"}}}
    st = scheduler.schedule(spec(model=V1), stored, serving(V1["storageUri"]), T0).status
    assert st["quality"] == quality and "endpoints" not in st  # endpoints: reconcile publishes them each tick

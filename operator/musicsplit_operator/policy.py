"""Rollout policy as Flagger users know it, pure: the webhooks' effect, the
failed-analysis threshold and the hold deadline. Status and spec in, decisions
out; the scheduler acts on them, `webhooks.py` makes the calls.

The webhook worker records each hook's last call in `status.webhooks[name]`:
`{type, key, outcome, code, reason, startedAt, finishedAt}`. A call answers
one point of one rollout attempt, named by its `key` (the canary version and
when its attempt started, then the point: an analysis interval, a step, the
promotion), so an answer given at another point, or to an earlier attempt of
the same version, is never read as this one's.

What each type does (Flagger's points):
- confirm-rollout: polled while the canary waits to start (phase Waiting);
  it starts once every one answers 2xx;
- pre-rollout: called once the canary revision is ready, before it gets any
  traffic (RawDeployment: before it is deployed); a failure counts toward the
  threshold and is tried again an interval later;
- rollout: called at the start of every analysis interval; its answer is one
  of that analysis' checks (a failure fails the analysis);
- confirm-traffic-increase / confirm-promotion: polled once an analysis
  passed, before the next weight / the promotion; the canary holds its weight
  (and keeps being analysed, every interval) until every one answers 2xx;
- rollback: polled while a canary is in flight; a 2xx rolls it back now;
- post-rollout: told once when a rollout ends (promoted, rolled back, aborted);
- event: told every Kubernetes Event the operator posts.
A gate's or check's non-2xx, timeout or unreachable URL is a "no"; nothing
from a response but its status code is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .analysis import FAIL, HOLD, PASS, Check, Verdict
from .router import TrafficMode, traffic_mode
from .spec import SeparationModelSpec, Webhook
from .status import INITIALIZING, PROGRESSING, WAITING, WAITING_PROMOTION, history_added, iso, parse_time

# Outcomes of one call (status.webhooks[name].outcome, and the metric's label)
OK, REJECTED, TIMEOUT, ERROR, NOT_ALLOWED = "ok", "rejected", "timeout", "error", "notAllowed"
OUTCOMES = (OK, REJECTED, TIMEOUT, ERROR, NOT_ALLOWED)
GATES = ("confirm-rollout", "confirm-traffic-increase", "confirm-promotion")
ENDED = ("promoted", "rolledBack", "aborted")  # history outcomes that end a rollout (post-rollout hooks)


@dataclass(frozen=True)
class HookCall:
    hook: Webhook
    key: str | None  # the point it answers; None: a notification nobody waits for
    payload: dict
    repeat_after_s: float | None = None  # a poll: ask again this long after an answer that did not settle it


@dataclass(frozen=True)
class HookJob:
    namespace: str
    name: str
    calls: tuple[HookCall, ...]
    uid: str | None = None


# ---------------------------------------------------------------- keys


def attempt(status: dict) -> str:
    return f"{status.get('canaryVersion')}@{status.get('canaryStartedAt')}"


def start_key(status: dict) -> str:
    return f"{attempt(status)}/start"


def interval_key(status: dict) -> str:
    return f"{attempt(status)}/interval@{status.get('stepStartedAt')}"


def rollback_key(status: dict) -> str:
    return f"{attempt(status)}/rollback"


def next_gate(spec: SeparationModelSpec, status: dict, mode: TrafficMode | None = None) -> tuple[str, str]:
    """The gate before the canary's next move, and the key its answers carry."""
    i = int(status.get("stepIndex") or 0)
    if i >= 0 and i + 1 >= len((mode or traffic_mode(spec)).weights(spec)):
        return "confirm-promotion", f"{attempt(status)}/promotion"
    return "confirm-traffic-increase", f"{attempt(status)}/step-{i + 1}"


# ---------------------------------------------------------------- reading answers


def answer(status: dict, hook: Webhook, key: str) -> dict | None:
    """The hook's last call if it answered this point."""
    rec = (status.get("webhooks") or {}).get(hook.name)
    if not isinstance(rec, dict) or rec.get("key") != key or rec.get("type") != hook.type:
        return None
    return rec if rec.get("outcome") in OUTCOMES else None


def gate(spec: SeparationModelSpec, status: dict, type_: str, key: str) -> list[str]:
    """The hooks of this gate that have not said yes to this point, each with
    why; empty: the gate is open (also when it has no hooks)."""
    closed = []
    for h in spec.analysis.hooks(type_):
        rec = answer(status, h, key)
        if rec is None:
            closed.append(f"{h.name} (not answered yet)")
        elif rec["outcome"] != OK:
            closed.append(f"{h.name} ({rec.get('reason')})")
    return closed


def answered(spec: SeparationModelSpec, status: dict, type_: str, key: str) -> bool:
    return all(answer(status, h, key) is not None for h in spec.analysis.hooks(type_))


def hook_checks(spec: SeparationModelSpec, status: dict, type_: str, key: str) -> tuple[Check, ...]:
    """Pre-rollout or rollout hooks as analysis checks: 2xx passes, any other
    answer fails (it counts toward the threshold), no answer yet or a URL the
    operator may not call holds."""
    out = []
    for h in spec.analysis.hooks(type_):
        rec = answer(status, h, key)
        name = f"webhook {h.name}"
        if rec is None:
            out.append(Check(name, None, None, HOLD, f"{type_} webhook {h.name}: not answered yet",
                             "WebhookPending"))
        elif rec["outcome"] == OK:
            out.append(Check(name, rec.get("code"), None, PASS, f"{type_} webhook {h.name}: {rec.get('reason')}"))
        elif rec["outcome"] == NOT_ALLOWED:
            out.append(Check(name, None, None, HOLD, f"{type_} webhook {h.name}: {rec.get('reason')}",
                             "WebhookUrlNotAllowed"))
        else:
            out.append(Check(name, rec.get("code"), None, FAIL,
                             f"{type_} webhook {h.name} failed: {rec.get('reason')}"))
    return tuple(out)


def rollout_checks(spec: SeparationModelSpec, status: dict) -> tuple[Check, ...]:
    """The rollout hooks' answers for this analysis interval (Measurements.webhooks)."""
    return hook_checks(spec, status, "rollout", interval_key(status))


def pre_rollout_verdict(spec: SeparationModelSpec, status: dict) -> Verdict:
    """The pre-rollout hooks' answers as the analysis of the step before the first."""
    checks = hook_checks(spec, status, "pre-rollout", interval_key(status))
    failed = [c for c in checks if c.result == FAIL]
    held = [c for c in checks if c.result == HOLD]
    if failed:
        return Verdict(FAIL, checks, "PreRolloutFailed", "; ".join(c.message for c in failed))
    if held:
        return Verdict(HOLD, checks, sorted({c.reason for c in held})[0], "holding: "
                       + "; ".join(c.message for c in held))
    return Verdict(PASS, checks, "PreRolloutPassed", "; ".join(c.message for c in checks)
                   or "no pre-rollout webhooks")


def moving_on(status: dict) -> bool:
    """The latest analysis passed at the canary's current weight and interval:
    only a gate stands between the canary and its next move."""
    la = status.get("lastAnalysis") or {}
    at, since = parse_time(la.get("time")), parse_time(status.get("stepStartedAt"))
    return (la.get("result") == PASS and la.get("canaryVersion") == status.get("canaryVersion")
            and la.get("weight") == status.get("canaryWeight") and at is not None and since is not None
            and at >= since)


def rollback_requested(spec: SeparationModelSpec, status: dict) -> str | None:
    """The rollback hook that said 2xx for this attempt (Flagger: 'roll back now')."""
    key = rollback_key(status)
    for h in spec.analysis.hooks("rollback"):
        rec = answer(status, h, key)
        if rec is not None and rec["outcome"] == OK:
            return f"{h.name} ({rec.get('reason')})"
    return None


def staged(spec: SeparationModelSpec) -> bool:
    """Whether a canary starts without traffic: something must pass before its first weight."""
    return bool(spec.analysis.hooks("pre-rollout") or spec.analysis.hooks("confirm-traffic-increase"))


def hold_expired(spec: SeparationModelSpec, status: dict, now: datetime) -> float | None:
    """Seconds the canary has been held, once that is past spec.rollout.holdDeadline
    (and only once per hold)."""
    limit = spec.rollout.hold_deadline_s
    since = parse_time(status.get("holdStartedAt"))
    if limit is None or since is None or status.get("holdDeadlineExceededAt"):
        return None
    held = (now - since).total_seconds()
    return held if held > limit else None


# ---------------------------------------------------------------- what to call


def payload(namespace: str, name: str, status: dict, hook: Webhook, **extra) -> dict:
    """Flagger's payload (name, namespace, phase, metadata) and the rollout's
    versions and weight."""
    body = {
        "name": name, "namespace": namespace, "phase": status.get("phase"), "type": hook.type,
        "webhook": hook.name, "metadata": dict(hook.metadata),
        "canaryVersion": status.get("canaryVersion"), "canaryStorageUri": status.get("canaryStorageUri"),
        "canaryWeight": status.get("canaryWeight") or 0,
        "stableVersion": status.get("stableVersion"), "stableStorageUri": status.get("stableStorageUri"),
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _age(rec: dict, now: datetime) -> float:
    at = parse_time(rec.get("finishedAt"))
    return float("inf") if at is None else (now - at).total_seconds()


def due_calls(spec: SeparationModelSpec, status: dict, now: datetime, namespace: str, name: str, *,
              ready: bool, canary_url: str | None = None, mode: TrafficMode | None = None) -> list[HookCall]:
    """The hooks to call now for the rollout in `status` (the tick submits them;
    the worker drops what it is already doing). `ready`: the canary revision
    serves (its pre-rollout and rollout hooks need it)."""
    phase = status.get("phase")
    every = spec.rollout.interval_s
    calls: list[HookCall] = []
    if spec.rollout.paused:  # a paused rollout asks nobody (notifications still go out)
        return calls

    def add(type_: str, key: str, *, poll: bool, again: bool = False):
        # poll: ask again an interval after an answer that was not a yes;
        # again: ask again an interval after any answer (rollout hooks, every interval).
        for h in spec.analysis.hooks(type_):
            rec = answer(status, h, key)
            if rec is not None:
                settled = rec["outcome"] == OK and not again
                if not (poll or again) or settled or _age(rec, now) < every:
                    continue
            calls.append(HookCall(h, key, payload(namespace, name, status, h, canaryUrl=canary_url),
                                  every if (poll or again) else None))

    if phase == WAITING:
        add("confirm-rollout", start_key(status), poll=True)
    if phase in (WAITING, PROGRESSING, WAITING_PROMOTION):
        add("rollback", rollback_key(status), poll=True)
    if phase not in (PROGRESSING, WAITING_PROMOTION) or not ready:
        return calls
    step = int(status.get("stepIndex") or 0)
    if moving_on(status):
        add(*next_gate(spec, status, mode), poll=True)
    elif step == -1:
        since = parse_time(status.get("stepStartedAt"))
        # The first try as soon as the revision serves; after a failure, an interval later.
        if not status.get("failedAnalyses") or since is None or (now - since).total_seconds() >= every:
            add("pre-rollout", interval_key(status), poll=False)
    if step >= 0:
        add("rollout", interval_key(status), poll=False, again=True)
    return calls


def notifications(spec: SeparationModelSpec, old: dict, new: dict, events, namespace: str, name: str,
                  now: datetime) -> list[HookCall]:
    """Post-rollout hooks for a rollout this tick ended, and event hooks for
    every Event it posts: told once, answers change nothing."""
    calls: list[HookCall] = []
    post = spec.analysis.hooks("post-rollout")
    # A first deployment has nothing to roll out from (Flagger's initialisation runs no hooks).
    if post and old.get("stableVersion") and old.get("phase") != INITIALIZING:
        for entry in history_added(old, new):
            if entry.get("outcome") not in ENDED:
                continue
            for h in post:
                calls.append(HookCall(h, f"{entry['version']}@{entry.get('at')}/{entry['outcome']}", payload(
                    namespace, name, new, h, canaryVersion=entry["version"], canaryStorageUri=entry["storageUri"],
                    canaryWeight=0, outcome=entry["outcome"], reason=entry.get("reason"))))
    for h in spec.analysis.hooks("event"):
        for type_, reason, message in events:
            meta = {**h.metadata, "eventType": type_, "eventReason": reason, "eventMessage": message,
                    "timestamp": str(int(now.timestamp() * 1000))}
            calls.append(HookCall(h, None, {**payload(namespace, name, new, h), "metadata": meta}))
    return calls


def record(hook: Webhook, key: str | None, outcome: str, reason: str, started: datetime, finished: datetime,
           code: int | None = None) -> dict:
    """What status keeps of one call: never the response body."""
    rec = {"type": hook.type, "key": key, "outcome": outcome, "reason": reason, "startedAt": iso(started),
           "finishedAt": iso(finished)}
    if code is not None:
        rec["code"] = code
    return rec

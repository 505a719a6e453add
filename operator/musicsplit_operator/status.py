"""The SeparationModel's status: phases, conditions, history, and the editor
the scheduler writes a new status with. Pure: dicts in, dicts out.

All rollout state lives in status, so an operator restarted mid-rollout
carries on from it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .router import TrafficMode, traffic_mode
from .spec import SeparationModelSpec

HISTORY_LIMIT = 50

# Phases (Waiting and WaitingPromotion are Flagger's: a closed confirm-rollout /
# confirm-promotion gate)
INITIALIZING, PROGRESSING, PROMOTING = "Initializing", "Progressing", "Promoting"
SUCCEEDED, ROLLED_BACK, FAILED, PAUSED = "Succeeded", "RolledBack", "Failed", "Paused"
WAITING, WAITING_PROMOTION = "Waiting", "WaitingPromotion"
ACTIVE = (PROGRESSING, PAUSED, WAITING_PROMOTION)  # a canary with its revision deployed
PHASES = (INITIALIZING, WAITING, PROGRESSING, WAITING_PROMOTION, PROMOTING, SUCCEEDED, ROLLED_BACK, FAILED, PAUSED)

# The status keys the rollout owns; StatusEditor carries them from one tick to the
# next. `probe` (the canary's golden-set result) and `goldenBaseline` (the
# stable's) are written by the probe worker only, `webhooks` (each hook's last
# call) by the webhook worker only; the ticks carry them unchanged.
# `registry` (the MLflow resolution) is the handler's; `registryReports` (what
# was written back to MLflow) the registry reporter's; `quality` (continuous
# verification of the serving version) the verification worker's.
KEEP = ("phase", "stableVersion", "stableStorageUri", "stableReleased", "canaryVersion", "canaryStorageUri",
        "canaryReleased", "canaryStartedAt", "canaryRegistry", "canaryWeight", "stepIndex", "stepStartedAt",
        "holds", "failedAnalyses", "holdStartedAt", "holdDeadlineExceededAt", "lastAnalysis", "history",
        "conditions", "message", "goldenBaseline", "probe", "webhooks", "registry", "registryReports",
        "quality")
# What belongs to one rollout attempt of a canary, gone with it.
CANARY_KEYS = ("canaryVersion", "canaryStorageUri", "canaryReleased", "canaryStartedAt", "canaryRegistry",
               "stepIndex", "stepStartedAt", "holds", "failedAnalyses", "holdStartedAt", "holdDeadlineExceededAt")


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def without_nulls(value, in_list: bool = False):
    """`value` with no null inside list items: a merge patch deletes keys set
    to null in objects, but inside a list the API server stores the item
    without them, and what kopf then reads back differs from what it wrote."""
    if isinstance(value, list):
        return [without_nulls(v, True) for v in value]
    if isinstance(value, dict):
        return {k: without_nulls(v, in_list) for k, v in value.items() if not (in_list and v is None)}
    return value


def set_condition(conditions: list[dict], type_: str, status: bool, reason: str, message: str, now: datetime,
                  generation: int | None = None) -> list[dict]:
    """Upsert a condition; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out, found = [], False
    for c in conditions or []:
        if c.get("type") == type_:
            found = True
            c = {**c, "reason": reason, "message": message, "observedGeneration": generation,
                 "lastTransitionTime": c.get("lastTransitionTime") if c.get("status") == value else iso(now),
                 "status": value}
        out.append(c)
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message,
                    "lastTransitionTime": iso(now), "observedGeneration": generation})
    return out


def condition(status: dict, type_: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def history_entry(model: dict, outcome: str, reason: str, now: datetime, golden: dict | None = None) -> dict:
    """One line of the version registry; `golden` is the release's golden-set
    result, when it has one."""
    out = {"version": model["version"], "storageUri": model["storageUri"], "outcome": outcome, "at": iso(now),
           "reason": reason}
    if model.get("released"):
        out["released"] = model["released"]
    if model.get("startedAt"):
        out["startedAt"] = model["startedAt"]
    if model.get("registry"):
        out["registry"] = model["registry"]
    if golden and golden.get("meanSdr") is not None:
        out["goldenSdr"] = {"mean": golden["meanSdr"], "perStem": golden.get("perStem") or {},
                            "goldenSet": golden.get("goldenSet", "builtin")}
    return out


def matching_probe(record: dict | None, version: str | None, storage_uri: str | None,
                   golden_set: str = "builtin") -> dict | None:
    """The probe record if it is of this release and golden set; one of
    another is no evidence."""
    if not record or not version or record.get("version") != version:
        return None
    # Records written before these fields existed: storageUri matches, the set was the built-in one.
    if record.get("storageUri", storage_uri) != storage_uri or record.get("goldenSet", "builtin") != golden_set:
        return None
    return record


def history_added(old: dict, new: dict) -> list[dict]:
    """The history entries `new` has that `old` had not (the history is bounded:
    once full, an entry in pushes one out)."""
    old_h, new_h = old.get("history") or [], new.get("history") or []
    if new_h[:len(old_h)] == old_h:
        return new_h[len(old_h):]
    return new_h[-1:] if new_h != old_h else []


def rejected(status: dict, version: str, storage_uri: str) -> dict | None:
    """The history entry that rolled this exact release back, if its latest entry did."""
    for h in reversed(status.get("history") or []):
        if h.get("version") == version and h.get("storageUri") == storage_uri:
            return h if h.get("outcome") in ("rolledBack", "aborted", "failed") else None
    return None


class StatusEditor:
    """A status being edited: a copy of the old one's rollout keys, plus helpers
    for conditions, Events and history. `d` is the whole new status."""

    def __init__(self, status: dict, spec: SeparationModelSpec, now: datetime, generation: int | None,
                 mode: TrafficMode | None = None):
        self.d = {k: status.get(k) for k in KEEP if status.get(k) is not None}
        self.d.setdefault("history", [])
        self.d.setdefault("conditions", [])
        self.d["observedGeneration"] = generation
        self.spec, self.now, self.gen = spec, now, generation
        self.mode = mode or traffic_mode(spec)
        self.events: list[tuple[str, str, str]] = []
        self.cond("TrafficSplit", *self.mode.split_condition())

    def cond(self, type_, ok, reason, message):
        self.d["conditions"] = set_condition(self.d["conditions"], type_, ok, reason, message, self.now, self.gen)

    def event(self, type_, reason, message):
        self.events.append((type_, reason, message))

    def history(self, model: dict, outcome: str, reason: str):
        ref = self.spec.analysis.golden_set.ref
        golden = next((r for key in ("probe", "goldenBaseline")
                       if (r := matching_probe(self.d.get(key), model["version"], model["storageUri"], ref))
                       and not r.get("error")), None)
        self.d["history"] = [*self.d.get("history", []), history_entry(model, outcome, reason, self.now, golden)][
            -HISTORY_LIMIT:]

    def clear_canary(self):
        self.end_hold("RolloutEnded", "the rollout of the canary ended")
        for k in CANARY_KEYS:
            self.d.pop(k, None)
        self.d["canaryWeight"] = 0

    def hold(self):
        """The canary stays where it is: the hold deadline counts from the first time."""
        self.d.setdefault("holdStartedAt", iso(self.now))

    def end_hold(self, reason: str, message: str):
        self.d.pop("holdStartedAt", None)
        self.d.pop("holdDeadlineExceededAt", None)
        c = condition(self.d, "HoldDeadlineExceeded")
        if c and c.get("status") == "True":
            self.cond("HoldDeadlineExceeded", False, reason, message)

    def set_canary(self, target: dict, **fields):
        """The release being rolled out (or deployed first), from now on."""
        self.d.update(canaryVersion=target["version"], canaryStorageUri=target["storageUri"],
                      canaryStartedAt=iso(self.now), **fields)
        for key, field in (("released", "canaryReleased"), ("registry", "canaryRegistry")):
            if target.get(key):
                self.d[field] = target[key]

    def canary_model(self) -> dict:
        return {"version": self.d.get("canaryVersion"), "storageUri": self.d.get("canaryStorageUri"),
                "released": self.d.get("canaryReleased"), "startedAt": self.d.get("canaryStartedAt"),
                "registry": self.d.get("canaryRegistry")}

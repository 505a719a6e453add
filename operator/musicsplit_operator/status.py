"""The SeparationModel's status: its typed model (`RolloutStatus`), phases,
conditions, history, and the editor the scheduler writes a new status with.
Pure: the stored JSON in, a `RolloutStatus` edited by attribute, JSON out.

All rollout state lives in status, so an operator restarted mid-rollout
carries on from it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

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
# verification of the serving version) its worker's.
KEEP = ("phase", "stableVersion", "stableStorageUri", "stableReleased", "canaryVersion", "canaryStorageUri",
        "canaryReleased", "canaryStartedAt", "canaryRegistry", "canaryWeight", "stepIndex", "stepStartedAt",
        "holds", "failedAnalyses", "holdStartedAt", "holdDeadlineExceededAt", "lastAnalysis", "history",
        "conditions", "message", "goldenBaseline", "probe", "webhooks", "registry", "registryReports", "quality")
# What belongs to one rollout attempt of a canary, gone with it (RolloutStatus's field names).
CANARY_FIELDS = ("canary_version", "canary_storage_uri", "canary_released", "canary_started_at", "canary_registry",
                 "step_index", "step_started_at", "holds", "failed_analyses", "hold_started_at",
                 "hold_deadline_exceeded_at")


class RolloutStatus(BaseModel):
    """The SeparationModel's `.status`, typed. Fields are snake_case here and
    camelCase in the object (`alias_generator`); keys this operator does not
    know (a newer or older operator's) are kept as extras, so they round-trip.
    `dump()` is what goes to the API server: no null anywhere a merge patch
    would keep it (see `without_nulls`).

    Nested records (conditions, history entries, analyses, probe results,
    webhook answers, the registry's) stay plain dicts: other modules and the
    gateway read them by their JSON keys."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    phase: str | None = None
    message: str | None = None
    observed_generation: int | None = None
    # the version serving when no rollout is in flight
    stable_version: str | None = None
    stable_storage_uri: str | None = None
    stable_released: str | None = None
    # the rollout attempt of a canary (CANARY_FIELDS, plus its weight)
    canary_version: str | None = None
    canary_storage_uri: str | None = None
    canary_released: str | None = None
    canary_started_at: str | None = None
    canary_registry: dict[str, Any] | None = None
    canary_weight: int | None = None
    step_index: int | None = None
    step_started_at: str | None = None
    holds: int | None = None
    failed_analyses: int | None = None
    hold_started_at: str | None = None
    hold_deadline_exceeded_at: str | None = None
    last_analysis: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    conditions: list[dict[str, Any]] | None = None
    # written by the background workers; the ticks carry them unchanged
    golden_baseline: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    webhooks: dict[str, Any] | None = None
    registry: dict[str, Any] | None = None
    registry_reports: dict[str, Any] | None = None
    # continuous verification of the serving version (free for its worker to fill)
    quality: dict[str, Any] | None = None
    # published for the gateway at each tick
    shadow: dict[str, Any] | None = None
    endpoints: dict[str, Any] | None = None
    # refused InferenceService writes, and when to try again
    apply_retry: dict[str, Any] | None = None

    @classmethod
    def of(cls, status: dict | None) -> "RolloutStatus":
        return cls.model_validate(status or {})

    def dump(self) -> dict:
        """The status as the API server stores it: camelCase keys, unset fields absent."""
        return self.model_dump(by_alias=True, exclude_none=True)

    def clear(self, *fields: str) -> None:
        """Unset fields (snake_case names): gone from the dump."""
        for f in fields:
            setattr(self, f, None)

    def condition(self, type_: str) -> dict | None:
        return next((c for c in self.conditions or [] if c.get("type") == type_), None)


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
    for conditions, Events and history. `st` is the whole new status."""

    def __init__(self, status: dict, spec: SeparationModelSpec, now: datetime, generation: int | None,
                 mode: TrafficMode | None = None):
        self.st = RolloutStatus.of({k: status.get(k) for k in KEEP if status.get(k) is not None})
        if self.st.history is None:
            self.st.history = []
        if self.st.conditions is None:
            self.st.conditions = []
        self.st.observed_generation = generation
        self.spec, self.now, self.gen = spec, now, generation
        self.mode = mode or traffic_mode(spec)
        self.events: list[tuple[str, str, str]] = []
        self.cond("TrafficSplit", *self.mode.split_condition())

    def view(self) -> dict:
        """The status as JSON, for what reads it by its keys (policy, the traffic mode)."""
        return self.st.dump()

    def cond(self, type_, ok, reason, message):
        self.st.conditions = set_condition(self.st.conditions, type_, ok, reason, message, self.now, self.gen)

    def event(self, type_, reason, message):
        self.events.append((type_, reason, message))

    def history(self, model: dict, outcome: str, reason: str):
        ref = self.spec.analysis.golden_set.ref
        golden = next((r for rec in (self.st.probe, self.st.golden_baseline)
                       if (r := matching_probe(rec, model["version"], model["storageUri"], ref))
                       and not r.get("error")), None)
        self.st.history = [*(self.st.history or []), history_entry(model, outcome, reason, self.now, golden)][
            -HISTORY_LIMIT:]

    def clear_canary(self):
        self.end_hold("RolloutEnded", "the rollout of the canary ended")
        self.st.clear(*CANARY_FIELDS)
        self.st.canary_weight = 0

    def hold(self):
        """The canary stays where it is: the hold deadline counts from the first time."""
        if self.st.hold_started_at is None:
            self.st.hold_started_at = iso(self.now)

    def end_hold(self, reason: str, message: str):
        self.st.clear("hold_started_at", "hold_deadline_exceeded_at")
        c = self.st.condition("HoldDeadlineExceeded")
        if c and c.get("status") == "True":
            self.cond("HoldDeadlineExceeded", False, reason, message)

    def update(self, **fields):
        """Set fields by their snake_case names."""
        for k, v in fields.items():
            if k not in RolloutStatus.model_fields:
                raise AttributeError(f"RolloutStatus has no field {k!r}")
            setattr(self.st, k, v)

    def set_canary(self, target: dict, **fields):
        """The release being rolled out (or deployed first), from now on."""
        self.update(canary_version=target["version"], canary_storage_uri=target["storageUri"],
                    canary_started_at=iso(self.now), **fields)
        if target.get("released"):
            self.st.canary_released = target["released"]
        if target.get("registry"):
            self.st.canary_registry = target["registry"]

    def canary_model(self) -> dict:
        st = self.st
        return {"version": st.canary_version, "storageUri": st.canary_storage_uri, "released": st.canary_released,
                "startedAt": st.canary_started_at, "registry": st.canary_registry}

"""One reconcile tick, in the order it happens:

- `read`: the SeparationModel fresh from the API server, its spec parsed, an
  mlflow:// release resolved, the InferenceService observed;
- `decide`: the scheduler's plan (scheduler.py; pure);
- `measure`: when an analysis is due, Prometheus, the golden-set results in
  status, shadow agreement and webhook answers, judged (analysis.py);
- `act`: what goes to the background workers (probes, registry write-back),
  the status's published URLs and conditions, the InferenceService write;
- `write`: the status saved, and only then webhooks, notifications and Events.

No rollout state in memory: what one tick needs from the last is in status.
The operator's long-lived parts (`Operator`: settings, workers, what the
installed KServe understands) live in kopf's memo.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from . import (analysis, api, metrics, policy, prometheus, registry, reporting, router, scheduler, shadow, verification,
               webhooks)
from .goldenstore import GoldenStore
from .settings import OperatorSettings
from .spec import SeparationModelSpec, parse_spec
from .status import ACTIVE, FAILED, RolloutStatus, parse_time, set_condition, without_nulls

ACTION_ANNOTATION = "musicsplit.io/action"
RESOLVE = "resolve"  # musicsplit.io/action=resolve: ask the registry again now
REGISTRY_RETRY_S = 30.0  # at least this long between two failed registry resolutions
APPLY_BACKOFF_MAX_S = 300.0


@dataclass
class Operator:
    """What outlives a tick (kept in kopf's memo): settings, the background
    workers, and what the installed KServe understands."""

    settings: OperatorSettings
    kserve: router.KServeAPI = router.LEGACY
    probes: object | None = None  # probe.ProbeWorker
    hooks: webhooks.WebhookWorker | None = None
    reports: reporting.ReportWorker | None = None  # only with a registry
    golden_store: GoldenStore | None = None
    verifier: verification.VerifyWorker | None = None

    def workers(self) -> list:
        return [w for w in (self.probes, self.verifier, self.reports, self.hooks) if w is not None]

    def forget(self, namespace: str, name: str) -> None:
        metrics.forget(namespace, name)
        for worker in self.workers():
            worker.forget(namespace, name)

    def webhook_rule(self):
        return webhooks.policy(self.settings.webhook_url_allowlist, self.settings.egress_allowed_networks)


@dataclass
class Tick:
    """What one tick read."""

    body: object
    name: str
    namespace: str
    meta: dict
    old: dict  # the status as stored (the JSON: what the merge patch is computed against)
    now: datetime
    spec: SeparationModelSpec | None = None  # None: invalid
    registry: registry.Resolution | None = None  # an mlflow:// release's resolution
    obs: router.Observed | None = None
    mode: router.TrafficMode | None = None
    events: list = field(default_factory=list)

    @property
    def generation(self):
        return self.meta.get("generation")

    @property
    def prior(self) -> RolloutStatus:
        """The stored status, typed."""
        return RolloutStatus.of(self.old)

    @property
    def action(self) -> str | None:
        return (self.meta.get("annotations") or {}).get(ACTION_ANNOTATION)


def run(op: Operator, body, name: str, namespace: str, patch, logger) -> None:
    """One tick: read, decide, measure, act, write."""
    tick = read(op, body, name, namespace, patch)
    if tick is None:
        return
    plan = decide(tick)
    new, route = measure(op, tick, plan, logger)
    calls = act(op, tick, new, route, logger)
    if route is not None and not apply(op, tick, route, plan.create, patch):
        return
    write(op, tick, new, calls, patch)


# ---------------------------------------------------------------- read


def read(op: Operator, body, name: str, namespace: str, patch) -> Tick | None:
    """The tick's inputs, or None when there is nothing more to do (the object
    is gone, its spec invalid, its release not resolved yet, or a refused write
    is backing off)."""
    # Fresh rather than from the watch stream: the previous tick's status patch
    # may not have come back through the watch yet, and deciding on a stale
    # status would repeat its decision (and its Events).
    fresh = api.get_model(namespace, name)
    meta = (fresh or {}).get("metadata") or {}
    if fresh is None or meta.get("deletionTimestamp"):
        op.forget(namespace, name)  # being deleted: the garbage collector takes the InferenceService
        return None
    tick = Tick(body, name, namespace, meta, dict(fresh.get("status") or {}), datetime.now(timezone.utc))
    retry_at = parse_time((tick.prior.apply_retry or {}).get("nextAttemptAt"))
    if retry_at is not None and tick.now < retry_at:
        return None  # backing off after a refused write
    try:
        tick.spec = parse_spec(dict(fresh.get("spec") or {}))
    except ValidationError as e:
        _invalid_spec(tick, e, patch)
        return None
    if tick.spec.model.from_registry:
        spec = _resolve_release(op, tick)
        if spec is None:  # nothing resolved yet: nothing to deploy or roll out
            new = tick.prior
            new.observed_generation = tick.generation
            new.message = f"waiting for the model registry: {tick.registry.message}"
            _registry_status(new, tick)
            patch.status.update(_status_patch(tick.old, new))
            if tick.action:
                patch.metadata.setdefault("annotations", {})[ACTION_ANNOTATION] = None
            return None
        tick.spec = spec
    s = op.settings
    tick.obs = router.observe(api.get_isvc(namespace, name), s.cluster_domain)
    tick.mode = router.traffic_mode(tick.spec, op.kserve, isvc=name, namespace=namespace, domain=s.cluster_domain)
    return tick


def _invalid_spec(tick: Tick, e: ValidationError, patch) -> None:
    msg = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
    old, new = tick.old, tick.prior
    new.phase, new.message, new.observed_generation = FAILED, f"invalid spec: {msg}", tick.generation
    new.conditions = set_condition(new.conditions or [], "SpecValid", False, "InvalidSpec", msg, tick.now,
                                   tick.generation)
    if old.get("message") != new.message:
        kopf.warn(tick.body, reason="InvalidSpec", message=msg)
    patch.status.update(_status_patch(old, new))
    metrics.record(tick.namespace, tick.name, old, new.dump())


def _resolve_release(op: Operator, tick: Tick) -> SeparationModelSpec | None:
    """spec.model with an mlflow:// reference resolved (registry.py): the spec
    to roll out, or None while nothing is resolved."""
    s, sm = op.settings, tick.spec
    res = tick.registry = registry.resolve_for_tick(
        sm.model, tick.prior.registry, tick.now, generation=tick.generation, tracking_uri=s.mlflow_tracking_uri,
        timeout_s=s.mlflow_timeout_seconds, retry_s=max(sm.rollout.interval_s, REGISTRY_RETRY_S),
        force=tick.action == RESOLVE)
    was = tick.prior.condition("RegistryResolved") or {}
    if not res.ok and was.get("message") != res.message:
        kopf.warn(tick.body, reason=res.reason, message=res.message)
    return sm.model_copy(update={"model": res.model}) if res.model is not None else None


# ---------------------------------------------------------------- decide


def decide(tick: Tick) -> scheduler.Plan:
    plan = scheduler.schedule(tick.spec, tick.old, tick.obs, tick.now, generation=tick.generation,
                              action=tick.action, mode=tick.mode)
    tick.events.extend(plan.events)
    if plan.verdict:  # judged by the scheduler from status alone (the pre-rollout hooks)
        metrics.analysed(tick.namespace, tick.name, plan.verdict)
    return plan


# ---------------------------------------------------------------- measure


def measure(op: Operator, tick: Tick, plan: scheduler.Plan, logger) -> tuple[RolloutStatus, router.Route | None]:
    """The analysis, when one is due: (the new status, the route to write)."""
    s, sm, new = op.settings, tick.spec, RolloutStatus.of(plan.status)
    prometheus_url, why = _prometheus(op, tick, new)
    if not plan.analyze:
        return new, plan.route
    # The tick only reads the golden-set results the probe worker wrote to
    # status; it never waits for a probe.
    if prometheus_url is None:
        m = analysis.Measurements(prometheus_error=why, prometheus_reason=prometheus.NOT_ALLOWED)
    else:
        m = prometheus.measure(
            prometheus_url=prometheus_url, model=tick.name, namespace=tick.namespace,
            namespace_label=s.namespace_label, canary_version=new.canary_version,
            stable_version=new.stable_version, window_s=sm.window_s(), timeout_s=s.prometheus_timeout_seconds)
    view = new.dump()  # for what reads the status by its JSON keys
    if sm.analysis.golden_set.enabled:
        m = replace(m, **analysis.golden_measurements(view, sm.analysis.golden_set.ref))
    mirrored = shadow.required(sm, view, tick.mode)
    if mirrored and prometheus_url is not None and not m.prometheus_error:
        m = replace(m, **shadow.measure(
            prometheus_url=prometheus_url, model=tick.name, namespace=tick.namespace,
            canary_version=new.canary_version, stable_version=new.stable_version or "",
            window_s=sm.window_s(), timeout_s=s.prometheus_timeout_seconds))
    m = replace(m, webhooks=policy.rollout_checks(sm, view))
    verdict = analysis.judge(m, sm, compare_stable=tick.mode.splits, compare_shadow=mirrored)
    metrics.analysed(tick.namespace, tick.name, verdict.result)
    logger.info("analysis of %s at %s %%: %s (%s)", new.canary_version, new.canary_weight,
                verdict.result, verdict.message)
    after = scheduler.after_analysis(sm, view, verdict, tick.now, generation=tick.generation, mode=tick.mode)
    tick.events.extend(after.events)
    return RolloutStatus.of(after.status), after.route or plan.route


def _prometheus(op: Operator, tick: Tick, new: RolloutStatus) -> tuple[str | None, str]:
    """The Prometheus this model's analysis may query (AnalysisConfigured says which, or why none)."""
    s = op.settings
    url, why = prometheus.resolve_url(tick.spec.analysis.prometheus_url, s.prometheus_url,
                                      s.prometheus_url_allowlist)
    new.conditions = set_condition(new.conditions or [], "AnalysisConfigured", url is not None,
                                      "Configured" if url else prometheus.NOT_ALLOWED, why, tick.now,
                                      tick.generation)
    return url, why


# ---------------------------------------------------------------- act


def act(op: Operator, tick: Tick, new: RolloutStatus, route: router.Route | None, logger) -> list:
    """Background work, published URLs and conditions; the webhook calls to
    make once the status is saved."""
    sm, obs, mode, old = tick.spec, tick.obs, tick.mode, tick.old
    ns, name, now = tick.namespace, tick.name, tick.now
    # A tick that moves the traffic observed KServe before the move: its URLs
    # may still lead to the previous version. Probes are planned on the next.
    view = new.dump()  # for what reads the status by its JSON keys
    if route is None and op.probes is not None:
        job = scheduler.probe_due(sm, view, obs, now, ns, name, tick.meta.get("uid"), mode)
        if job is not None and op.probes.submit(job):
            logger.info("golden-set probe queued: %s", ", ".join(f"{t.role} {t.version}" for t in job.targets))
    if route is None and op.verifier is not None:
        check = verification.due(sm, view, obs, now, ns, name, tick.meta.get("uid"), mode)
        if check is not None and op.verifier.submit(check):
            logger.info("golden-set verification of serving %s queued", check.target.version)
    # Where the gateway mirrors users' requests (only while both versions serve them).
    mirror = shadow.published(sm, view, obs, mode) if route is None else None
    if mirror:
        new.shadow = mirror
    urls = router.endpoints(mode, obs, view, new.phase in ACTIVE) if route is None else tick.prior.endpoints
    if urls:
        new.endpoints = urls
    view = new.dump()
    # Webhooks run in the background too; the same care about URLs that may
    # still lead to the previous revision (the canary "serves" only on a tick
    # that moves no traffic).
    serving = obs.latest_ready and route is None
    canary_url = mode.canary_url(obs, view) if serving and mode.deployed(view) else None
    calls = (policy.due_calls(sm, view, now, ns, name, ready=serving, canary_url=canary_url, mode=mode)
             + policy.notifications(sm, old, view, tick.events, ns, name, now))
    if op.reports is not None:
        _report(op, tick, logger)
    _registry_status(new, tick)
    new.conditions = _webhooks_condition(op, tick, new.conditions or [])
    new.conditions = set_condition(new.conditions or [], "SpecValid", True, "Valid", "spec accepted", now,
                                   tick.generation)
    new.apply_retry = None
    if (tick.prior.condition("Degraded") or {}).get("status") == "True":
        new.conditions = set_condition(new.conditions or [], "Degraded", False, "Applied",
                                       "the InferenceService was written", now, tick.generation)
    return calls


def apply(op: Operator, tick: Tick, route: router.Route, create: bool, patch) -> bool:
    """Write the InferenceService. Refused (RBAC, admission, a conflict, an
    outage): nothing decided at this tick is saved (the next attempt decides
    again), but the SeparationModel says why, a Warning Event too, and the
    write is tried again with exponential backoff."""
    try:
        api.write_route(tick.body, tick.name, tick.namespace, tick.spec, route, create, tick.mode)
        return True
    except ApiException as e:
        if e.status == 404 or (e.status or 0) < 400:
            raise
        old = tick.old
        detail = e.reason or ""
        try:
            detail = json.loads(e.body or "{}").get("message") or detail
        except (TypeError, ValueError):
            pass
        new = tick.prior
        failures = int((new.apply_retry or {}).get("failures") or 0) + 1
        delay = min(op.settings.tick_seconds * 2 ** (failures - 1), APPLY_BACKOFF_MAX_S)
        msg = f"could not {'create' if create else 'patch'} the InferenceService: HTTP {e.status}: {detail}"[:1000]
        new.apply_retry = {"failures": failures, "nextAttemptAt": (tick.now + timedelta(seconds=delay)).isoformat(
            timespec="milliseconds")}
        new.conditions = set_condition(new.conditions or [], "Degraded", True, "ApplyFailed",
                                          f"{msg} (attempt {failures}; next in {delay:g}s)", tick.now,
                                          tick.generation)
        kopf.warn(tick.body, reason="ApplyFailed", message=msg)
        patch.status.update(_status_patch(old, new))
        return False


# ---------------------------------------------------------------- write


def write(op: Operator, tick: Tick, new: RolloutStatus, calls: list, patch) -> None:
    """The status saved first: a notification never announces a decision that
    a refused status write then undoes."""
    ns, name, old = tick.namespace, tick.name, tick.old
    # The metrics first: whoever reads the saved status finds them up to date.
    metrics.record(ns, name, old, new.dump(), tick.spec.analysis.golden_set.ref)
    try:
        api.write_status(ns, name, _status_patch(old, new))
    except ApiException as e:
        if e.status == 404:
            return
        # Nothing of this tick happened: the next one decides again.
        kopf.warn(tick.body, reason="StatusWriteFailed", message=f"could not save the status: HTTP {e.status}")
        return
    if calls and op.hooks is not None:
        op.hooks.submit(policy.HookJob(ns, name, tuple(calls), tick.meta.get("uid")))
    for type_, reason, message in tick.events:
        kopf.event(tick.body, type=type_, reason=reason, message=message)
    metrics.posted(ns, name, tick.events)
    if tick.action:
        patch.metadata.setdefault("annotations", {})[ACTION_ANNOTATION] = None


def _status_patch(old: dict, new: RolloutStatus) -> dict:
    """A merge patch from `old` (as stored) to `new`: changed keys only (keys
    gone from `new` are deleted), so a tick that decides nothing writes nothing."""
    new = without_nulls(new.dump())
    out = {k: None for k in old if k not in new}
    out.update({k: v for k, v in new.items() if old.get(k) != v})
    return out


def _webhooks_condition(op: Operator, tick: Tick, conditions: list[dict]) -> list[dict]:
    """WebhooksConfigured: whether the operator may call every hook's URL."""
    hooks = tick.spec.analysis.webhooks
    if not hooks:
        return conditions
    rule = op.webhook_rule()
    refused = {h.name: why for h in hooks if (why := rule.refusal(h.url))}
    why = ("webhooks the operator never calls, so their gates stay closed and their checks hold: "
           + "; ".join(f"{n}: {w}" for n, w in refused.items()) if refused
           else "the operator may call every webhook's URL")
    return set_condition(conditions, "WebhooksConfigured", not refused,
                         "WebhookUrlNotAllowed" if refused else "Configured", why, tick.now, tick.generation)


def _registry_status(new: RolloutStatus, tick: Tick) -> None:
    res = tick.registry
    if res is None:  # no registry reference (any more)
        new.registry = None
        new.conditions = [c for c in new.conditions or [] if c.get("type") != "RegistryResolved"]
        return
    new.registry = res.status
    new.conditions = set_condition(new.conditions or [], "RegistryResolved", res.ok, res.reason,
                                      res.message, tick.now, tick.generation)


def _report(op: Operator, tick: Tick, logger) -> None:
    """Tell MLflow what status knows and it does not (reporting.py), in the background."""
    status, ref = tick.old, tick.spec.analysis.golden_set.ref
    due = reporting.reports_due(status, tick.namespace, tick.name, ref)
    if not due:
        return
    url, _ = prometheus.resolve_url(tick.spec.analysis.prometheus_url, op.settings.prometheus_url,
                                    op.settings.prometheus_url_allowlist)
    done = (tick.prior.registry_reports or {}).get("done") or {}
    job = reporting.ReportJob(tick.namespace, tick.name, tuple(due), tuple(sorted(done, key=lambda k: done[k] or "")),
                              url, op.settings.namespace_label)
    if op.reports.submit(job):
        logger.info("registry write-back queued: %s", ", ".join(r.key for r in due))

"""kopf handlers: read the SeparationModel and its InferenceService, call the
pure decision functions, write the result. No rollout state in memory.

Import this module to register the handlers (`musicsplit serve operator` does).
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from . import (analysis, goldenset, kserve, metrics, policy, probe, prometheus, registry, reporting, router,
               scheduler, shadow, webhooks)
from .goldenstore import GoldenStore
from .settings import OperatorSettings
from .spec import GROUP, ISVC_GROUP, ISVC_PLURAL, ISVC_VERSION, PLURAL, VERSION, parse_spec
from .status import ACTIVE, FAILED, parse_time, set_condition, without_nulls

ACTION_ANNOTATION = "musicsplit.io/action"
RESOLVE = "resolve"  # musicsplit.io/action=resolve: ask the registry again now
REGISTRY_RETRY_S = 30.0  # at least this long between two failed registry resolutions
APPLY_RETRY = "applyRetry"  # status key: refused InferenceService writes, and when to try again
APPLY_BACKOFF_MAX_S = 300.0
SETTINGS = OperatorSettings()
# Started with the operator (configure):
PROBES: probe.ProbeWorker | None = None
GOLDEN_STORE: GoldenStore | None = None
REPORTS: reporting.ReportWorker | None = None  # only with a registry
HOOKS: webhooks.WebhookWorker | None = None
KSERVE: router.KServeAPI = router.LEGACY  # what the installed KServe understands (read at start)
KSERVE_HOW = "not read yet"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger, **_) -> None:
    settings.persistence.finalizer = "musicsplit.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="musicsplit.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="musicsplit.io", key="last-handled-configuration")
    settings.posting.level = logging.getLevelName(SETTINGS.event_log_level)
    if SETTINGS.metrics_port:
        metrics.serve(SETTINGS.metrics_port, SETTINGS.metrics_address)
    settings.watching.server_timeout = 60
    # A deleted SeparationModel keeps its finalizer until its timer stops; a tick
    # that is running at that moment is checked again after this many seconds
    # (kopf's default, 60, held deletions for a minute). Ticks are short: no
    # probe or other long call runs in one.
    settings.background.cancellation_polling = 1
    # The CRD is installed before the operator (manifests/, the chart): no need
    # to watch CRDs, so no RBAC for them.
    settings.scanning.disabled = True
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    global PROBES, GOLDEN_STORE, REPORTS, HOOKS, KSERVE, KSERVE_HOW
    KSERVE, KSERVE_HOW = kserve.detect(SETTINGS.kserve_api)
    logger.info("KServe: %s", KSERVE_HOW)
    GOLDEN_STORE = GoldenStore(
        SETTINGS.golden_cache_dir or tempfile.mkdtemp(prefix="musicsplit-golden-"),
        allowlist=SETTINGS.golden_storage_allowlist, max_set_bytes=SETTINGS.golden_set_max_bytes,
        max_cache_bytes=SETTINGS.golden_cache_max_bytes, timeout_s=SETTINGS.golden_fetch_timeout_seconds,
        ttl_s=SETTINGS.golden_cache_ttl_seconds)
    PROBES = probe.ProbeWorker(write_worker_fields, workers=SETTINGS.probe_workers,
                               timeout_s=SETTINGS.probe_timeout_seconds, load_set=load_golden_set)
    if SETTINGS.mlflow_tracking_uri:
        registry.preload()
        REPORTS = reporting.ReportWorker(
            write_worker_fields, lambda: registry.client(SETTINGS.mlflow_tracking_uri, SETTINGS.mlflow_timeout_seconds),
            prometheus_timeout_s=SETTINGS.prometheus_timeout_seconds)
    HOOKS = webhooks.WebhookWorker(write_worker_fields, workers=SETTINGS.webhook_workers, rule=_webhook_rule())
    logger.info("musicsplit operator: tick %.1fs, %d golden-set probe workers, %d webhook workers",
                SETTINGS.tick_seconds, SETTINGS.probe_workers, SETTINGS.webhook_workers)


@kopf.on.cleanup()
def stop_workers(**_) -> None:
    for worker in (PROBES, REPORTS, HOOKS):
        if worker is not None:
            worker.shutdown()


def read_configmap(namespace: str, name: str) -> tuple[dict | None, dict | None]:
    """A golden set's ConfigMap (binaryData, data); errors say what to fix, never what it holds."""
    where = f"ConfigMap {namespace}/{name}"
    try:
        cm = k8s.CoreV1Api().read_namespaced_config_map(name, namespace)
    except ApiException as e:
        if e.status == 404:
            raise goldenset.GoldenSetError(f"{where} (spec.analysis.goldenSet.configMap) not found",
                                           goldenset.UNAVAILABLE) from None
        if e.status == 403:
            raise goldenset.GoldenSetError(f"the operator may not read {where} (its RBAC: get configmaps)",
                                           goldenset.UNAVAILABLE) from None
        raise goldenset.GoldenSetError(f"{where}: HTTP {e.status} from the Kubernetes API",
                                       goldenset.UNAVAILABLE) from None
    except Exception as e:  # noqa: BLE001 - connection errors: the set is unavailable for now
        raise goldenset.GoldenSetError(f"{where}: {type(e).__name__} reading it", goldenset.UNAVAILABLE) from None
    return cm.binary_data, cm.data


@contextmanager
def load_golden_set(job: scheduler.ProbeJob):
    """The probe job's golden set, its fetched files kept until the job ends."""
    with (GOLDEN_STORE.pinned() if GOLDEN_STORE is not None else nullcontext(None)) as fetch:
        yield goldenset.load(job.golden_set, job.namespace, read_configmap=read_configmap, fetch=fetch,
                             max_seconds=SETTINGS.golden_set_max_seconds)


def _api() -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi()


def get_isvc(namespace: str, name: str) -> dict | None:
    try:
        return _api().get_namespaced_custom_object(ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def write_route(body, name: str, namespace: str, spec, route: router.Route, create: bool,
                mode: router.TrafficMode) -> None:
    if create:
        isvc = router.inference_service(name, namespace, spec, route, mode)
        kopf.adopt(isvc, owner=body)  # ownerReferences: deleting the SeparationModel deletes it
        try:
            _api().create_namespaced_custom_object(ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, isvc)
            return
        except ApiException as e:
            if e.status != 409:  # created meanwhile: fall through to patch it
                raise
    _api().patch_namespaced_custom_object(
        ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name, router.patch(name, spec, route, mode),
        _content_type="application/merge-patch+json")


def write_status(namespace: str, name: str, fields: dict) -> None:
    """A tick's status merge patch, written now (not after the handler, as
    kopf's `patch` would): what follows it may rely on it being saved."""
    if fields:
        _api().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": fields},
                                                     _content_type="application/merge-patch+json")


def write_worker_fields(namespace: str, name: str, fields: dict) -> None:
    """A background worker's write (the probe's results, the registry
    reporter's state, webhook answers): its own keys only, so a tick's status
    patch (which carries them unchanged) and this one never undo each other."""
    try:
        _api().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                     {"status": without_nulls(fields)},
                                                     _content_type="application/merge-patch+json")
    except ApiException as e:
        if e.status != 404:  # deleted meanwhile: nothing to record
            raise


def _status_patch(old: dict, new: dict) -> dict:
    """A merge patch from `old` to `new`: changed keys only (keys gone from `new`
    are deleted), so a tick that decides nothing writes nothing."""
    new = without_nulls(new)
    out = {k: None for k in old if k not in new}
    out.update({k: v for k, v in new.items() if old.get(k) != v})
    return out


def _forget(namespace: str, name: str) -> None:
    metrics.forget(namespace, name)
    for worker in (PROBES, REPORTS, HOOKS):
        if worker is not None:
            worker.forget(namespace, name)


def _webhook_rule():
    return webhooks.policy(SETTINGS.webhook_url_allowlist, SETTINGS.egress_allowed_networks)


def _webhooks_condition(sm, conditions: list[dict], now, generation) -> list[dict]:
    """WebhooksConfigured: whether the operator may call every hook's URL."""
    if not sm.analysis.webhooks:
        return conditions
    rule = _webhook_rule()
    refused = {h.name: why for h in sm.analysis.webhooks if (why := rule.refusal(h.url))}
    why = (f"webhooks the operator never calls, so their gates stay closed and their checks hold: "
           + "; ".join(f"{n}: {w}" for n, w in refused.items()) if refused
           else "the operator may call every webhook's URL")
    return set_condition(conditions, "WebhooksConfigured", not refused,
                         "WebhookUrlNotAllowed" if refused else "Configured", why, now, generation)


def _resolve_release(sm, old: dict, now: datetime, generation, action, body):
    """spec.model with an mlflow:// reference resolved (registry.py): the spec
    to roll out, or None while nothing is resolved, and status.registry."""
    res = registry.resolve_for_tick(
        sm.model, old.get("registry"), now, generation=generation, tracking_uri=SETTINGS.mlflow_tracking_uri,
        timeout_s=SETTINGS.mlflow_timeout_seconds, retry_s=max(sm.rollout.interval_s, REGISTRY_RETRY_S),
        force=action == RESOLVE)
    was = next((c for c in old.get("conditions") or [] if c.get("type") == "RegistryResolved"), {})
    if not res.ok and was.get("message") != res.message:
        kopf.warn(body, reason=res.reason, message=res.message)
    effective = sm.model_copy(update={"model": res.model}) if res.model is not None else None
    return effective, res


def _registry_status(new: dict, res, now: datetime, generation) -> None:
    if res is None:  # no registry reference (any more)
        new.pop("registry", None)
        new["conditions"] = [c for c in new.get("conditions") or [] if c.get("type") != "RegistryResolved"]
        return
    new["registry"] = res.status
    new["conditions"] = set_condition(new.get("conditions") or [], "RegistryResolved", res.ok, res.reason,
                                      res.message, now, generation)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.tick_seconds, initial_delay=0.0, sharp=False)
def reconcile(body, name, namespace, patch, logger, **_) -> None:
    # Read the object fresh rather than from the watch stream: the previous tick's
    # status patch may not have come back through the watch yet, and deciding on
    # a stale status would repeat its decision (and its Events).
    try:
        fresh = _api().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            _forget(namespace, name)
            return
        raise
    spec, status, meta = fresh.get("spec") or {}, fresh.get("status") or {}, fresh.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        _forget(namespace, name)
        return  # being deleted: the garbage collector takes the InferenceService
    now = datetime.now(timezone.utc)
    retry_at = parse_time(((status or {}).get(APPLY_RETRY) or {}).get("nextAttemptAt"))
    if retry_at is not None and now < retry_at:
        return  # backing off after a refused write
    old = dict(status or {})
    generation = meta.get("generation")
    action = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)

    try:
        sm = parse_spec(dict(spec))
    except ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        new = dict(old, phase=FAILED, message=f"invalid spec: {msg}", observedGeneration=generation)
        new["conditions"] = set_condition(old.get("conditions") or [], "SpecValid", False, "InvalidSpec",
                                                  msg, now, generation)
        if old.get("message") != new["message"]:
            kopf.warn(body, reason="InvalidSpec", message=msg)
        patch.status.update(_status_patch(old, new))
        metrics.record(namespace, name, old, new)
        return

    res = None
    if sm.model.from_registry:
        sm, res = _resolve_release(sm, old, now, generation, action, body)
        if sm is None:  # nothing resolved yet: nothing to deploy or roll out
            new = dict(old, observedGeneration=generation, message=f"waiting for the model registry: {res.message}")
            _registry_status(new, res, now, generation)
            patch.status.update(_status_patch(old, new))
            if action:
                patch.metadata.setdefault("annotations", {})[ACTION_ANNOTATION] = None
            return
    ref = sm.analysis.golden_set.ref
    isvc = get_isvc(namespace, name)
    obs = router.observe(isvc, SETTINGS.cluster_domain)
    mode = router.traffic_mode(sm, KSERVE, isvc=name, namespace=namespace, domain=SETTINGS.cluster_domain)
    plan = scheduler.schedule(sm, old, obs, now, generation=generation, action=action, mode=mode)
    route, events, create = plan.route, list(plan.events), plan.create
    new = plan.status
    if plan.verdict:  # judged by the scheduler from status alone (the pre-rollout hooks)
        metrics.analysed(namespace, name, plan.verdict)
    prometheus_url, why = prometheus.resolve_url(sm.analysis.prometheus_url, SETTINGS.prometheus_url,
                                                 SETTINGS.prometheus_url_allowlist)
    new["conditions"] = set_condition(new.get("conditions") or [], "AnalysisConfigured", prometheus_url is not None,
                                      "Configured" if prometheus_url else prometheus.NOT_ALLOWED, why, now,
                                      generation)
    if plan.analyze:
        # The tick only reads the golden-set results the probe worker wrote to
        # status; it never waits for a probe.
        if prometheus_url is None:
            m = analysis.Measurements(prometheus_error=why, prometheus_reason=prometheus.NOT_ALLOWED)
        else:
            m = prometheus.measure(
                prometheus_url=prometheus_url, model=name, namespace=namespace,
                namespace_label=SETTINGS.namespace_label, canary_version=new["canaryVersion"],
                stable_version=new.get("stableVersion"), window_s=sm.window_s(),
                timeout_s=SETTINGS.prometheus_timeout_seconds)
        if sm.analysis.golden_set.enabled:
            m = replace(m, **analysis.golden_measurements(new, ref))
        mirrored = shadow.required(sm, new, mode)
        if mirrored and prometheus_url is not None and not m.prometheus_error:
            m = replace(m, **shadow.measure(
                prometheus_url=prometheus_url, model=name, namespace=namespace,
                canary_version=new["canaryVersion"], stable_version=new.get("stableVersion") or "",
                window_s=sm.window_s(), timeout_s=SETTINGS.prometheus_timeout_seconds))
        m = replace(m, webhooks=policy.rollout_checks(sm, new))
        verdict = analysis.judge(m, sm, compare_stable=mode.splits, compare_shadow=mirrored)
        metrics.analysed(namespace, name, verdict.result)
        logger.info("analysis of %s at %s %%: %s (%s)", new.get("canaryVersion"), new.get("canaryWeight"),
                    verdict.result, verdict.message)
        after = scheduler.after_analysis(sm, new, verdict, now, generation=generation, mode=mode)
        new = after.status
        route = after.route or route
        events += after.events
    # A tick that moves the traffic observed KServe before the move: its URLs
    # may still lead to the previous version. Probes are planned on the next.
    job = scheduler.probe_due(sm, new, obs, now, namespace, name, meta.get("uid"), mode) if route is None else None
    if job is not None and PROBES is not None and PROBES.submit(job):
        logger.info("golden-set probe queued: %s", ", ".join(f"{t.role} {t.version}" for t in job.targets))
    # Where the gateway mirrors users' requests (only while both versions serve them).
    mirror = shadow.published(sm, new, obs, mode) if route is None else None
    if mirror:
        new["shadow"] = mirror
    urls = router.endpoints(mode, obs, new, new.get("phase") in ACTIVE) if route is None else old.get("endpoints")
    if urls:
        new["endpoints"] = urls
    # Webhooks run in the background too; the same care about URLs that may
    # still lead to the previous revision (the canary "serves" only on a tick
    # that moves no traffic).
    serving = obs.latest_ready and route is None
    canary_url = mode.canary_url(obs, new) if serving and mode.deployed(new) else None
    calls = (policy.due_calls(sm, new, now, namespace, name, ready=serving, canary_url=canary_url, mode=mode)
             + policy.notifications(sm, old, new, events, namespace, name, now))
    if REPORTS is not None:
        _report(old, namespace, name, prometheus_url, ref, logger)
    _registry_status(new, res, now, generation)

    new["conditions"] = _webhooks_condition(sm, new.get("conditions") or [], now, generation)
    new["conditions"] = set_condition(new.get("conditions") or [], "SpecValid", True, "Valid",
                                              "spec accepted", now, generation)
    if route is not None:
        try:
            write_route(body, name, namespace, sm, route, create, mode)
        except ApiException as e:
            if e.status == 404 or (e.status or 0) < 400:
                raise
            _apply_failed(body, old, e, now, generation, create, patch)
            return
    new.pop(APPLY_RETRY, None)
    if (next((c for c in old.get("conditions") or [] if c.get("type") == "Degraded"), {})).get("status") == "True":
        new["conditions"] = set_condition(new.get("conditions") or [], "Degraded", False, "Applied",
                                          "the InferenceService was written", now, generation)
    # Saved before anyone hears of it: a notification never announces a
    # decision that a refused status write then undoes.
    try:
        write_status(namespace, name, _status_patch(old, new))
    except ApiException as e:
        if e.status == 404:
            return
        # Nothing of this tick happened: the next one decides again.
        kopf.warn(body, reason="StatusWriteFailed", message=f"could not save the status: HTTP {e.status}")
        return
    if calls and HOOKS is not None:
        HOOKS.submit(policy.HookJob(namespace, name, tuple(calls), meta.get("uid")))
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=reason, message=message)
    metrics.record(namespace, name, old, new, ref)
    metrics.posted(namespace, name, events)
    if action:
        patch.metadata.setdefault("annotations", {})[ACTION_ANNOTATION] = None


def _apply_failed(body, old: dict, e: ApiException, now: datetime, generation, create: bool, patch) -> None:
    """The API server refused the InferenceService write (RBAC, admission, a
    conflict, an outage): nothing decided at this tick is saved (the next
    attempt decides again), but the SeparationModel says why, a Warning Event
    too, and the write is tried again with exponential backoff."""
    verb = "create" if create else "patch"
    detail = e.reason or ""
    try:
        detail = json.loads(e.body or "{}").get("message") or detail
    except (TypeError, ValueError):
        pass
    failures = int((old.get(APPLY_RETRY) or {}).get("failures") or 0) + 1
    delay = min(SETTINGS.tick_seconds * 2 ** (failures - 1), APPLY_BACKOFF_MAX_S)
    msg = f"could not {verb} the InferenceService: HTTP {e.status}: {detail}"[:1000]
    new = dict(old)
    new[APPLY_RETRY] = {"failures": failures,
                        "nextAttemptAt": (now + timedelta(seconds=delay)).isoformat(timespec="milliseconds")}
    new["conditions"] = set_condition(old.get("conditions") or [], "Degraded", True, "ApplyFailed",
                                      f"{msg} (attempt {failures}; next in {delay:g}s)", now, generation)
    kopf.warn(body, reason="ApplyFailed", message=msg)
    patch.status.update(_status_patch(old, new))


def _report(status: dict, namespace: str, name: str, prometheus_url: str | None, ref: str, logger) -> None:
    """Tell MLflow what status knows and it does not (reporting.py), in the background."""
    due = reporting.reports_due(status, namespace, name, ref)
    if not due:
        return
    done = (status.get(reporting.STATUS_KEY) or {}).get("done") or {}
    job = reporting.ReportJob(namespace, name, tuple(due), tuple(sorted(done, key=lambda k: done[k] or "")),
                              prometheus_url, SETTINGS.namespace_label)
    if REPORTS.submit(job):
        logger.info("registry write-back queued: %s", ", ".join(r.key for r in due))

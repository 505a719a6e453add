"""kopf handlers: read the SeparationModel and its InferenceService, call the
pure decision functions, write the result. No rollout state in memory.

Import this module to register the handlers (`musicsplit serve operator` does).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from . import analysis, metrics, probe, prometheus, router, scheduler
from .settings import OperatorSettings
from .spec import GROUP, ISVC_GROUP, ISVC_PLURAL, ISVC_VERSION, PLURAL, VERSION, parse_spec
from .status import FAILED, SUCCEEDED, set_condition

ACTION_ANNOTATION = "musicsplit.io/action"
SETTINGS = OperatorSettings()


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
    # The CRD is installed before the operator (manifests/, the chart): no need
    # to watch CRDs, so no RBAC for them.
    settings.scanning.disabled = True
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    logger.info("musicsplit operator: tick %.1fs", SETTINGS.tick_seconds)


def _api() -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi()


def get_isvc(namespace: str, name: str) -> dict | None:
    try:
        return _api().get_namespaced_custom_object(ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def write_route(body, name: str, namespace: str, spec, route: router.Route, create: bool) -> None:
    if create:
        isvc = router.inference_service(name, namespace, spec, route)
        kopf.adopt(isvc, owner=body)  # ownerReferences: deleting the SeparationModel deletes it
        try:
            _api().create_namespaced_custom_object(ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, isvc)
            return
        except ApiException as e:
            if e.status != 409:  # created meanwhile: fall through to patch it
                raise
    _api().patch_namespaced_custom_object(
        ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name, router.patch(name, spec, route),
        _content_type="application/merge-patch+json")


def _status_patch(old: dict, new: dict) -> dict:
    """A merge patch from `old` to `new`: changed keys only (keys gone from `new`
    are deleted), so a tick that decides nothing writes nothing."""
    out = {k: None for k in old if k not in new}
    out.update({k: v for k, v in new.items() if old.get(k) != v})
    return out


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.tick_seconds, initial_delay=0.0, sharp=False)
def reconcile(body, name, namespace, patch, logger, **_) -> None:
    # Read the object fresh rather than from the watch stream: the previous tick's
    # status patch may not have come back through the watch yet, and deciding on
    # a stale status would repeat its decision (and its Events).
    try:
        fresh = _api().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            metrics.forget(namespace, name)
            return
        raise
    spec, status, meta = fresh.get("spec") or {}, fresh.get("status") or {}, fresh.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        metrics.forget(namespace, name)
        return  # being deleted: the garbage collector takes the InferenceService
    now = datetime.now(timezone.utc)
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

    isvc = get_isvc(namespace, name)
    obs = router.observe(isvc)
    plan = scheduler.schedule(sm, old, obs, now, generation=generation, action=action)
    route, events, create = plan.route, list(plan.events), plan.create
    new = plan.status
    if plan.analyze:
        baseline = old.get("goldenBaseline") or {}
        cached_sdr = baseline.get("meanSdr") if baseline.get("version") == old.get("stableVersion") else None
        m = prometheus.measure(
            prometheus_url=sm.analysis.prometheus_url, model=name, namespace=namespace,
            namespace_label=SETTINGS.namespace_label, canary_version=new["canaryVersion"],
            stable_version=new.get("stableVersion"), window_s=sm.window_s(), golden=sm.analysis.golden_set,
            canary_url=obs.urls.get("latest") or (obs.url if sm.raw else None), stable_url=obs.urls.get("prev"),
            stable_sdr=cached_sdr, timeout_s=SETTINGS.prometheus_timeout_seconds,
            probe_timeout_s=SETTINGS.probe_timeout_seconds)
        verdict = analysis.judge(m, sm, compare_stable=not sm.raw)
        logger.info("analysis of %s at %s %%: %s (%s)", new.get("canaryVersion"), new.get("canaryWeight"),
                    verdict.result, verdict.message)
        after = scheduler.after_analysis(sm, new, verdict, now, generation=generation)
        new = after.status
        if m.stable_sdr is not None and old.get("stableVersion"):
            new["goldenBaseline"] = {"version": old["stableVersion"], "meanSdr": round(m.stable_sdr, 4)}
        route = after.route or route
        events += after.events

    if (sm.raw and sm.analysis.golden_set and new.get("phase") == SUCCEEDED and obs.ready and obs.url
            and (new.get("goldenBaseline") or {}).get("version") != new.get("stableVersion")):
        # RawDeployment keeps no previous revision to probe during the next
        # rollout: measure the stable version's golden-set SDR while it serves.
        try:
            sdr = probe.golden_sdr(obs.url, name, SETTINGS.probe_timeout_seconds)
            new["goldenBaseline"] = {"version": new["stableVersion"], "meanSdr": round(sdr, 4)}
        except Exception as e:  # noqa: BLE001 - retried next tick; a rollout without it holds
            logger.warning("golden-set baseline of %s not measured: %s", new.get("stableVersion"), e)

    new["conditions"] = set_condition(new.get("conditions") or [], "SpecValid", True, "Valid",
                                              "spec accepted", now, generation)
    if route is not None:
        write_route(body, name, namespace, sm, route, create)
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=reason, message=message)
    patch.status.update(_status_patch(old, new))
    metrics.record(namespace, name, old, new)
    if action:
        patch.metadata.setdefault("annotations", {})[ACTION_ANNOTATION] = None

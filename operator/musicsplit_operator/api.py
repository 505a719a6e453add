"""The operator's Kubernetes API calls: the SeparationModel, its
InferenceService, golden-set ConfigMaps. The decisions are elsewhere."""

from __future__ import annotations

import kopf
import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from . import goldenset, router
from .spec import GROUP, ISVC_GROUP, ISVC_PLURAL, ISVC_VERSION, PLURAL, VERSION
from .status import without_nulls

MERGE = "application/merge-patch+json"
# Answers of an API server that is there but cannot serve now (throttling, a
# restart, etcd away): try again later, nothing to fix in the request.
UNAVAILABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
REFUSED_STATUSES = frozenset({401, 403})


def retry_later(e: BaseException) -> str | None:
    """Why a call failed when the fix is to try again later (or the message
    says what an administrator must fix meanwhile); None for any other error.
    Covers no connection, a dropped one, a timeout, a 429/5xx, and a 401/403
    (a misconfigured ServiceAccount or ClusterRole, or an API server that has
    just restarted and has not reloaded its RBAC yet)."""
    if isinstance(e, urllib3.exceptions.HTTPError):  # MaxRetryError, ProtocolError, timeouts
        return f"the Kubernetes API server did not answer ({type(e).__name__}: {e})"[:400]
    if isinstance(e, ApiException) and e.status in UNAVAILABLE_STATUSES:
        return f"the Kubernetes API server could not serve the request (HTTP {e.status} {e.reason})"
    if isinstance(e, ApiException) and e.status in REFUSED_STATUSES:
        return (f"the Kubernetes API server refused the operator (HTTP {e.status} {e.reason}): check its "
                "ServiceAccount and ClusterRole (manifests/rbac.yaml, the chart's rbac)")
    return None


def _api() -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi()


def get_model(namespace: str, name: str) -> dict | None:
    """The SeparationModel as stored now (None: gone)."""
    try:
        return _api().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


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
        _content_type=MERGE)


def write_status(namespace: str, name: str, fields: dict) -> None:
    """A tick's status merge patch, written now (not after the handler, as
    kopf's `patch` would): what follows it may rely on it being saved."""
    if fields:
        _api().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": fields},
                                                     _content_type=MERGE)


def write_worker_fields(namespace: str, name: str, fields: dict) -> None:
    """A background worker's write (the probe's results, the registry
    reporter's state, webhook answers): its own keys only, so a tick's status
    patch (which carries them unchanged) and this one never undo each other."""
    try:
        _api().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                     {"status": without_nulls(fields)}, _content_type=MERGE)
    except ApiException as e:
        if e.status != 404:  # deleted meanwhile: nothing to record
            raise


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

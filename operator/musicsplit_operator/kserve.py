"""What the installed KServe understands, read from the API server's OpenAPI
v3 document (readable by every authenticated client: no RBAC beyond discovery).

KServe v0.20 added `spec.canary` (Standard-mode canaries) and renamed the
deployment modes in the same release; its InferenceService schema is the
one signal a client can read before writing anything.
"""

from __future__ import annotations

import json
import logging

from kubernetes import client as k8s

from .router import LEGACY, V0_20, KServeAPI

log = logging.getLogger(__name__)
OPENAPI_PATH = "/openapi/v3/apis/serving.kserve.io/v1beta1"


def from_schema(doc: dict) -> KServeAPI | None:
    """The capabilities an OpenAPI v3 document's InferenceService schema shows;
    None if it has no InferenceService."""
    schemas = (doc.get("components") or {}).get("schemas") or {}
    for schema in schemas.values():
        gvks = schema.get("x-kubernetes-group-version-kind") or []
        if not any(g.get("kind") == "InferenceService" and g.get("group") == "serving.kserve.io" for g in gvks):
            continue
        spec = (schema.get("properties") or {}).get("spec") or {}
        ref = spec.get("$ref") or next((a.get("$ref") for a in spec.get("allOf") or [] if a.get("$ref")), None)
        if ref:  # components referenced by name (#/components/schemas/NAME)
            spec = schemas.get(ref.rsplit("/", 1)[-1]) or {}
        return V0_20 if "canary" in (spec.get("properties") or {}) else LEGACY
    return None


def _get_json(path: str) -> dict:
    """GET a non-resource path with the client's credentials."""
    api = k8s.ApiClient()
    method, url, headers, body, post = api.param_serialize(
        "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    resp = api.call_api(method, url, headers, body, post, _request_timeout=10)
    resp.read()
    if not 200 <= resp.status < 300:
        raise RuntimeError(f"HTTP {resp.status} from {path}")
    return json.loads(resp.data)


def detect(setting: str = "auto") -> tuple[KServeAPI, str]:
    """The KServe API to write for, and how it was found (for the log and conditions)."""
    if setting == "v0.20":
        return V0_20, "set by MUSICSPLIT_OPERATOR_KSERVE_API=v0.20"
    if setting == "legacy":
        return LEGACY, "set by MUSICSPLIT_OPERATOR_KSERVE_API=legacy"
    try:
        doc = _get_json(OPENAPI_PATH)
    except Exception as e:  # noqa: BLE001 - no KServe yet, or no OpenAPI v3: the older behaviour is the safe one
        log.warning("could not read KServe's InferenceService schema (%s: %s); writing for KServe before v0.20",
                    type(e).__name__, e)
        return LEGACY, f"InferenceService schema unreadable ({type(e).__name__}): assumed KServe before v0.20"
    found = from_schema(doc if isinstance(doc, dict) else {})
    if found is None:
        return LEGACY, "no InferenceService schema in the API server's OpenAPI: assumed KServe before v0.20"
    if found.standard_canary:
        return found, "the InferenceService CRD has spec.canary (KServe v0.20 or later)"
    return found, "the InferenceService CRD has no spec.canary (KServe before v0.20)"

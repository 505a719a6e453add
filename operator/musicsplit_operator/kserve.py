"""KServe as the operator sees it: what the installed KServe understands
(`detect`, from the API server's OpenAPI v3 document, readable by every
authenticated client: no RBAC beyond discovery), and what it reports about an
InferenceService (`observe`), in both of its mode vocabularies.

KServe v0.20 added `spec.canary` (Standard-mode canaries) and renamed the
deployment modes in the same release; its InferenceService schema is the
one signal a client can read before writing anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from kubernetes import client as k8s

from .spec import STANDARD_MODES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KServeAPI:
    """What the installed KServe understands (`kserve.detect` reads it from the
    API server): v0.20's mode names, and `spec.canary` (Standard-mode canaries)."""

    new_mode_names: bool = False
    standard_canary: bool = False


LEGACY = KServeAPI()  # KServe 0.15-0.19
V0_20 = KServeAPI(new_mode_names=True, standard_canary=True)


@dataclass(frozen=True)
class Observed:
    """What KServe reports about the InferenceService (`observe` builds it)."""

    exists: bool
    storage_uri: str | None = None  # what spec.predictor serves (Knative: the latest revision)
    canary_percent: int | None = None  # canaryTrafficPercent, or the Standard canary entry's trafficPercent
    ready: bool = False  # Ready condition
    latest_ready: bool = False  # the newest release is ready (Standard: its Deployment)
    latest_percent: int | None = None  # traffic % the newest release actually gets
    failure: str | None = None  # a reason KServe gives for not becoming ready
    urls: dict = field(default_factory=dict)  # latest / prev -> URL (Knative tags; Standard predictor Services)
    url: str | None = None
    canary_uri: str | None = None  # the Standard-mode canary entry's storageUri
    standard: bool = False  # KServe says Standard (or RawDeployment) mode

    @property
    def route(self) -> tuple:
        """(newest storageUri, its %, the stable's) as `Route` would say it."""
        if self.canary_uri is not None:
            return self.canary_uri, self.canary_percent, self.storage_uri
        return self.storage_uri, self.canary_percent, None


def service_url(isvc: str, namespace: str, name: str | None, domain: str = "cluster.local") -> str:
    """The cluster-local URL of one Standard-mode predictor's Service."""
    svc = f"{isvc}-{name}-predictor" if name else f"{isvc}-predictor"
    return f"http://{svc}.{namespace}.svc.{domain}"


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


# ---------------------------------------------------------------- reading what KServe reports


def storage_uri_of(pred: dict) -> str | None:
    if pred.get("model"):
        return pred["model"].get("storageUri")
    for c in pred.get("containers") or []:
        for e in c.get("env") or []:
            if e.get("name") == "STORAGE_URI":
                return e.get("value")
    return None


def _standard(isvc: dict) -> bool:
    """KServe's Standard mode in either vocabulary; status (the controller's word) first."""
    ann = (isvc.get("metadata") or {}).get("annotations") or {}
    mode = (isvc.get("status") or {}).get("deploymentMode") or ann.get("serving.kserve.io/deploymentMode")
    return mode in STANDARD_MODES


def _conditions(st: dict) -> dict:
    return {c.get("type"): c for c in st.get("conditions") or []}


def _failure(conds: dict, st: dict, keys=("PredictorReady", "Ready")) -> str | None:
    failure = None
    for key in keys:
        c = conds.get(key) or {}
        if c.get("status") == "False" and c.get("reason") in ("RevisionFailed", "RevisionMissing", "ModelLoadFailed",
                                                              "ProgressDeadlineExceeded"):
            failure = f"{c.get('reason')}: {c.get('message', '')}".strip()
    mf = st.get("modelStatus") or {}
    # KServe never clears lastFailureInfo: it describes the current model only
    # while the transition is blocked by that failed load.
    # The load error (e.g. the predictor's version check) says why; keep both.
    info = mf.get("lastFailureInfo") or {}
    if info.get("message") and mf.get("transitionStatus") == "BlockedByFailedLoad":
        load = f"{info.get('reason', 'Failed')}: {info['message']}"
        failure = f"{failure}; {load}" if failure else load
    return failure


def observe(isvc: dict | None, domain: str = "cluster.local") -> Observed:
    """What KServe says: readiness, the latest revision, the actual traffic."""
    if not isvc:
        return Observed(exists=False)
    meta = isvc.get("metadata") or {}
    pred = (isvc.get("spec") or {}).get("predictor") or {}
    st = isvc.get("status") or {}
    conds = _conditions(st)
    ready = (conds.get("Ready") or {}).get("status") == "True"
    if not _standard(isvc):
        comp = (st.get("components") or {}).get("predictor") or {}
        latest_created, latest_ready = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
        traffic = comp.get("traffic") or []
        return Observed(
            exists=True, storage_uri=storage_uri_of(pred), canary_percent=pred.get("canaryTrafficPercent"),
            ready=ready, latest_ready=bool(latest_created) and latest_created == latest_ready,
            latest_percent=next((t.get("percent") for t in traffic if t.get("latestRevision")
                                 or (latest_created and t.get("revisionName") == latest_created)), None),
            failure=_failure(conds, st),
            urls={t["tag"]: t["url"] for t in traffic if t.get("tag") and t.get("url")}, url=st.get("url"))
    # Standard (RawDeployment) has no revisions: KServe's PropagateRawStatus sets
    # only PredictorReady (from the Deployment's Available/Progressing conditions:
    # Unknown while a rolling update is under way, True once the new ReplicaSet
    # is available) and the URL. Its status.observedGeneration is the
    # Deployment's, not the InferenceService's, so it cannot be compared with
    # metadata.generation. Ready here means the spec last applied serves. For a
    # moment after a patch the conditions may still describe the old pods; that
    # only starts the interval early: the analysis counts requests labelled
    # with the canary's version, so it holds until the new pods serve.
    name, ns = meta.get("name", ""), meta.get("namespace", "")
    stable_ready = ((conds.get("PredictorReady") or conds.get("Ready") or {}).get("status") == "True")
    urls = {}
    if pred.get("name") or st.get("url"):
        urls["prev"] = service_url(name, ns, pred.get("name"), domain) if pred.get("name") else st.get("url")
    entries = (isvc.get("spec") or {}).get("canary") or []
    if not entries:
        return Observed(exists=True, storage_uri=storage_uri_of(pred), ready=ready, latest_ready=stable_ready,
                        failure=_failure(conds, st), urls=urls, url=st.get("url"), standard=True)
    # v0.20's Standard-mode canary: readiness per canary in status.canaryStatuses
    # and their sum in CanaryPredictorReady.
    entry = entries[0]
    cpred = entry.get("predictor") or {}
    cstat = next((c for c in st.get("canaryStatuses") or [] if c.get("name") == cpred.get("name")), {})
    canary_cond = conds.get("CanaryPredictorReady") or {}
    failure = _failure(conds, cstat, keys=("CanaryPredictorReady",))
    if cpred.get("name"):
        urls["latest"] = service_url(name, ns, cpred["name"], domain)
    return Observed(
        exists=True, storage_uri=storage_uri_of(pred), canary_percent=entry.get("trafficPercent"), ready=ready,
        latest_ready=bool(cstat.get("ready")) and canary_cond.get("status") == "True",
        latest_percent=cstat.get("trafficPercent") if cstat.get("ready") else None, failure=failure, urls=urls,
        url=st.get("url"), canary_uri=storage_uri_of(cpred), standard=True)

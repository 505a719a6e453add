"""The router: renders the KServe InferenceService that sets the traffic, and
reads back what KServe reports. Pure functions; handlers do the I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import SeparationModelSpec

MANAGED_BY = "musicsplit-operator"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class Route:
    """What the InferenceService must serve: the latest revision's storageUri,
    and the canary's traffic % (None: no split, the latest gets it all)."""

    storage_uri: str
    canary_percent: int | None


@dataclass(frozen=True)
class Observed:
    """What KServe reports about the InferenceService (`observe` builds it)."""

    exists: bool
    storage_uri: str | None = None  # what its spec serves as the latest revision
    canary_percent: int | None = None  # spec.predictor.canaryTrafficPercent
    ready: bool = False  # Ready condition
    latest_ready: bool = False  # the latest revision is ready (RawDeployment: the applied spec's Deployment)
    latest_percent: int | None = None  # traffic % the latest revision actually gets
    failure: str | None = None  # a reason KServe gives for not becoming ready
    urls: dict = field(default_factory=dict)  # traffic tag -> URL (latest, prev)
    url: str | None = None


def _resources(spec: SeparationModelSpec) -> dict:
    r = spec.predictor.resources
    limits, requests = {}, {}
    if r.gpu.count:
        limits["nvidia.com/gpu"] = str(r.gpu.count)
    if r.cpu:
        requests["cpu"] = limits["cpu"] = r.cpu
    if r.memory:
        requests["memory"] = limits["memory"] = r.memory
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def predictor(name: str, spec: SeparationModelSpec, route: Route) -> dict:
    """spec.predictor of the InferenceService; None values delete keys in a merge patch."""
    args = [f"--model_name={name}"]
    p = spec.predictor
    node_selector = dict(p.node_selector)
    if p.resources.gpu.type:
        node_selector[GPU_PRODUCT_LABEL] = p.resources.gpu.type
    # The predictor refuses to load a model whose musicsplit.yaml version differs:
    # the analysis filters metrics on model_version = spec.model.version, so a
    # mismatch would otherwise hold forever on "0 canary requests".
    env = [{"name": "MUSICSPLIT_EXPECTED_VERSION", "value": spec.model.version}]
    if spec.stems:
        env.append({"name": "MUSICSPLIT_STEMS", "value": ",".join(spec.stems)})
    if spec.cost_per_gpu_second is not None:
        env.append({"name": "MUSICSPLIT_GPU_PRICE_PER_SECOND", "value": str(spec.cost_per_gpu_second)})
    out = {
        "minReplicas": spec.replicas.min,
        "maxReplicas": spec.replicas.max,
        # None removes the field: KServe then sends 100 % to the latest revision (promotion).
        "canaryTrafficPercent": route.canary_percent,
        "nodeSelector": node_selector or None,
        "tolerations": p.tolerations or None,
    }
    if p.image:
        out["model"] = None
        out["containers"] = [{
            "name": "kserve-container", "image": p.image, "args": args,
            "env": [{"name": "STORAGE_URI", "value": route.storage_uri}, *env],
            "resources": _resources(spec),
        }]
    else:
        out["containers"] = None
        out["model"] = {
            "modelFormat": {"name": "musicsplit"}, "runtime": p.runtime, "storageUri": route.storage_uri,
            "args": args, "env": env, "resources": _resources(spec),
        }
    return out


def inference_service(name: str, namespace: str, spec: SeparationModelSpec, route: Route) -> dict:
    """The whole InferenceService (for create); drop the None placeholders."""
    pred = {k: v for k, v in predictor(name, spec, route).items() if v is not None}
    if "model" in pred:
        pred["model"] = {k: v for k, v in pred["model"].items() if v is not None}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "musicsplit.io/model": name},
            "annotations": annotations(spec),
        },
        "spec": {"predictor": pred},
    }


def annotations(spec: SeparationModelSpec) -> dict:
    return {
        "serving.kserve.io/deploymentMode": spec.deployment_mode,
        # Tag routing gives the latest and the previous revision their own URLs
        # (latest-..., prev-...): the golden-set probe calls each directly.
        "serving.kserve.io/enable-tag-routing": "true",
    }


def patch(name: str, spec: SeparationModelSpec, route: Route) -> dict:
    """A JSON merge patch that moves an existing InferenceService to `route`."""
    return {"metadata": {"annotations": annotations(spec)}, "spec": {"predictor": predictor(name, spec, route)}}


def _storage_uri(pred: dict) -> str | None:
    if pred.get("model"):
        return pred["model"].get("storageUri")
    for c in pred.get("containers") or []:
        for e in c.get("env") or []:
            if e.get("name") == "STORAGE_URI":
                return e.get("value")
    return None


def _raw(isvc: dict) -> bool:
    ann = (isvc.get("metadata") or {}).get("annotations") or {}
    mode = ann.get("serving.kserve.io/deploymentMode") or (isvc.get("status") or {}).get("deploymentMode")
    return mode == "RawDeployment"


def observe(isvc: dict | None) -> Observed:
    """What KServe says: readiness, the latest revision, the actual traffic."""
    if not isvc:
        return Observed(exists=False)
    pred = (isvc.get("spec") or {}).get("predictor") or {}
    st = isvc.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    ready = (conds.get("Ready") or {}).get("status") == "True"
    comp = (st.get("components") or {}).get("predictor") or {}
    latest_created, latest_ready = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
    traffic = comp.get("traffic") or []
    latest_percent = next((t.get("percent") for t in traffic if t.get("latestRevision")
                           or (latest_created and t.get("revisionName") == latest_created)), None)
    if _raw(isvc):
        # RawDeployment has no revisions: KServe's PropagateRawStatus sets only
        # PredictorReady (from the Deployment's Available/Progressing conditions:
        # Unknown while a rolling update is under way, True once the new
        # ReplicaSet is available) and the URL. Its status.observedGeneration is
        # the Deployment's, not the InferenceService's, so it cannot be compared
        # with metadata.generation. Ready here means the spec last applied serves.
        # For a moment after a patch the conditions may still describe the old
        # pods; that only starts the interval early: the analysis counts requests
        # labelled with the canary's version, so it holds until the new pods serve.
        pr = conds.get("PredictorReady") or conds.get("Ready") or {}
        latest = pr.get("status") == "True"
    else:
        latest = bool(latest_created) and latest_created == latest_ready
    failure = None
    for key in ("PredictorReady", "Ready"):
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
    return Observed(
        exists=True,
        storage_uri=_storage_uri(pred),
        canary_percent=pred.get("canaryTrafficPercent"),
        ready=ready,
        latest_ready=latest,
        latest_percent=latest_percent,
        failure=failure,
        urls={t["tag"]: t["url"] for t in traffic if t.get("tag") and t.get("url")},
        url=st.get("url"),
    )

"""The router: renders the KServe InferenceService that sets the traffic, and
reads back what KServe reports. Pure functions; handlers do the I/O."""

from __future__ import annotations

from .rollout import Observed, Route
from .spec import SeparationModelSpec

MANAGED_BY = "musicsplit-operator"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


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
    env = [{"name": "MUSICSPLIT_STEMS", "value": ",".join(spec.stems)}] if spec.stems else []
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
            "args": args, "env": env or None, "resources": _resources(spec),
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
    failure = None
    for key in ("PredictorReady", "Ready"):
        c = conds.get(key) or {}
        if c.get("status") == "False" and c.get("reason") in ("RevisionFailed", "RevisionMissing", "ModelLoadFailed"):
            failure = f"{c.get('reason')}: {c.get('message', '')}".strip()
    mf = st.get("modelStatus") or {}
    if (mf.get("lastFailureInfo") or {}).get("message"):
        failure = failure or f"{mf['lastFailureInfo'].get('reason', 'Failed')}: {mf['lastFailureInfo']['message']}"
    return Observed(
        exists=True,
        storage_uri=_storage_uri(pred),
        canary_percent=pred.get("canaryTrafficPercent"),
        ready=ready,
        latest_ready=bool(latest_created) and latest_created == latest_ready,
        latest_percent=latest_percent,
        failure=failure,
        urls={t["tag"]: t["url"] for t in traffic if t.get("tag") and t.get("url")},
        url=st.get("url"),
    )

"""The router: renders the KServe InferenceService that sets the traffic, reads
back what KServe reports, and owns the difference between KServe's deployment
modes (`TrafficMode`): how a canary is rendered, the weights it takes, where
each version answers, what promotion and rollback write. Pure functions;
handlers do the I/O, the scheduler asks the mode and never branches on it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from .kserve import LEGACY, V0_20, KServeAPI, Observed, observe, service_url  # noqa: F401  (re-exported)
from .spec import SeparationModelSpec

MANAGED_BY = "musicsplit-operator"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"



@dataclass(frozen=True)
class Route:
    """What the InferenceService must serve: the newest release (`storage_uri`,
    `version`) and its traffic % (None: it serves alone). While it shares the
    traffic in Standard mode the stable release is named too (`stable_uri`);
    Knative keeps it as the previous revision instead."""

    storage_uri: str
    canary_percent: int | None
    # Each version goes with its storageUri (which alone says what is served).
    version: str | None = field(default=None, compare=False)  # None: spec.model.version
    stable_uri: str | None = None
    stable_version: str | None = field(default=None, compare=False)


def predictor_name(storage_uri: str) -> str:
    """A Standard-mode predictor's name (KServe's Deployment and Service are
    <isvc>-<name>-predictor): from the release's storageUri, readable and unique."""
    tail = re.sub(r"[^a-z0-9]+", "-", storage_uri.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")[:16].strip("-")
    digest = hashlib.sha256(storage_uri.encode()).hexdigest()[:6]
    return f"v-{tail}-{digest}" if tail else f"v-{digest}"


class TrafficMode:
    """How one KServe deployment mode carries a canary. The scheduler asks;
    the subclasses answer (Knative, Standard with canaries, Standard without)."""

    name = ""
    splits = True  # the canary gets a share while the stable keeps the rest

    def __init__(self, kserve: KServeAPI = LEGACY):
        self.kserve = kserve

    def annotation(self) -> str:
        """The deploymentMode annotation in the installed KServe's vocabulary."""
        raise NotImplementedError

    def split_condition(self) -> tuple[bool, str, str]:
        """TrafficSplit: (status, reason, message)."""
        raise NotImplementedError

    def weights(self, spec: SeparationModelSpec) -> list[int]:
        return spec.rollout.weights() if self.splits else [100]

    def first_weight(self, spec: SeparationModelSpec, staged: bool) -> int:
        return 0 if staged else self.weights(spec)[0]

    def during(self, st: dict) -> Route:
        """What the InferenceService serves while the canary is in flight."""
        return Route(st["canaryStorageUri"], st.get("canaryWeight"), st.get("canaryVersion"))

    def rollback(self, st: dict, canary: dict) -> Route:
        """What rollback writes: the stable alone."""
        return Route(st["stableStorageUri"], None, st.get("stableVersion"))

    def promotion(self, st: dict) -> Route:
        """What promotion writes: the canary alone."""
        return Route(st["canaryStorageUri"], None, st.get("canaryVersion"))

    promotes_at_once = False  # the canary already serves everything: promotion writes nothing

    def deployed(self, st: dict) -> bool:
        """The canary runs (before its first step too, with no traffic)."""
        return True

    def seen(self, route: Route) -> tuple:
        """`route` as `Observed.route` reports it once KServe has it."""
        return route.storage_uri, route.canary_percent, None

    def routed(self, obs: Observed, st: dict) -> bool:
        """KServe routes the canary its share now (so its URL reaches it alone)."""
        return obs.latest_percent == st.get("canaryWeight")

    def canary_url(self, obs: Observed, st: dict) -> str | None:
        return obs.urls.get("latest")

    def stable_url(self, obs: Observed, st: dict) -> str | None:
        return obs.urls.get("prev")

    def serving_url(self, obs: Observed) -> str | None:
        """Where the version serving alone answers (None while another one shares the traffic)."""
        alone = obs.latest_ready and obs.canary_percent is None and obs.latest_percent in (None, 100)
        return obs.urls.get("latest") if alone else None

    def no_stable_url(self) -> str:
        return "KServe reports no URL for the previous revision (tag 'prev')"

    def no_canary_url(self) -> str:
        return "KServe reports no URL for the latest revision (tag 'latest')"

    def render(self, name: str, spec: SeparationModelSpec, route: Route) -> dict:
        """spec of the InferenceService for `route` (None values delete keys in a merge patch)."""
        raise NotImplementedError


class Knative(TrafficMode):
    """Serverless / Knative: canaryTrafficPercent splits between the latest and
    the previous revision; tags give each its URL."""

    name = "Knative"

    def annotation(self) -> str:
        return "Knative" if self.kserve.new_mode_names else "Serverless"

    def split_condition(self):
        return (True, "Serverless", "canaryTrafficPercent splits traffic between the previous and the latest "
                                    "revision (Knative)")

    def rollback(self, st: dict, canary: dict) -> Route:
        # Percent 0 sends all traffic back to the previous revision (KServe's documented rollback).
        return Route(canary["storageUri"], 0, canary.get("version"))

    def render(self, name, spec, route):
        return {"predictor": {**predictor(name, spec, route.storage_uri, route.version),
                              # None removes the field: KServe then sends 100 % to the latest revision.
                              "canaryTrafficPercent": route.canary_percent}}


class Standard(TrafficMode):
    """Standard (RawDeployment) mode on a KServe without spec.canary: one
    Deployment, no split; a new version takes all traffic at once."""

    name = "Standard"
    splits = False
    promotes_at_once = True

    def annotation(self) -> str:
        return "Standard" if self.kserve.new_mode_names else "RawDeployment"

    def split_condition(self):
        return (False, "RawDeploymentMode",
                "KServe Standard (RawDeployment) mode has no traffic split on this KServe (kserve#4074; its "
                "InferenceService CRD has no spec.canary, added in v0.20): a new version takes 100 % of traffic "
                "at once and is analysed there; rollback redeploys the stable storageUri")

    def during(self, st: dict) -> Route:
        # Before its first step the canary is not deployed at all: no split.
        if st.get("stepIndex") == -1:
            return Route(st["stableStorageUri"], None, st.get("stableVersion"))
        return Route(st["canaryStorageUri"], None, st.get("canaryVersion"))

    def deployed(self, st):
        return st.get("stepIndex") != -1  # before its first step the URL serves the stable

    def routed(self, obs, st):
        return self.deployed(st)

    def canary_url(self, obs, st):
        return obs.url

    def stable_url(self, obs, st):
        return None

    def serving_url(self, obs):
        return obs.url

    def no_canary_url(self) -> str:
        return "KServe reports no URL for the InferenceService yet"

    def no_stable_url(self) -> str:
        return ("RawDeployment keeps no previous revision to probe, and the stable version's baseline on this "
                "golden set was not measured while it served")

    def render(self, name, spec, route):
        out = predictor(name, spec, route.storage_uri, route.version)
        out["canaryTrafficPercent"] = None  # a leftover from Knative mode would mean nothing here
        return {"predictor": out}


class StandardCanary(Standard):
    """Standard mode on KServe v0.20+: the canary is a named entry of spec.canary
    with its own Deployment and Service, weighted on the HTTPRoute; promotion
    points spec.predictor at its name, rollback drops the entry."""

    name = "StandardCanary"
    splits = True
    promotes_at_once = False

    def __init__(self, kserve: KServeAPI = V0_20, isvc: str = "", namespace: str = "", domain: str = "cluster.local"):
        super().__init__(kserve)
        self.isvc, self.namespace, self.domain = isvc, namespace, domain

    def split_condition(self):
        # Read in KServe's source: v0.20.0 gives a canary its own Deployment and Service and sizes its
        # replicas by trafficPercent; the weights on the Gateway API HTTPRoutes came after that tag
        # (kserve#5912). Both releases carry spec.canary, so the operator cannot tell them apart.
        return (True, "StandardCanary", "spec.canary[].trafficPercent sets the canary's share; KServe splits it "
                                        "on its Gateway API HTTPRoutes (releases after v0.20.0; v0.20.0 itself "
                                        "only sizes the canary's replicas, and the canary then gets no traffic "
                                        "through the InferenceService's URL)")

    def during(self, st):
        return Route(st["canaryStorageUri"], st.get("canaryWeight"), st.get("canaryVersion"),
                     st.get("stableStorageUri"), st.get("stableVersion"))

    def deployed(self, st):
        return True

    def seen(self, route):
        return route.storage_uri, route.canary_percent, route.stable_uri if route.canary_percent is not None else None

    def routed(self, obs, st):
        return obs.latest_percent == st.get("canaryWeight") and obs.canary_uri == st.get("canaryStorageUri")

    def canary_url(self, obs, st):
        return obs.urls.get("latest")

    def stable_url(self, obs, st):
        return obs.urls.get("prev")

    def serving_url(self, obs):
        return obs.urls.get("prev") if obs.canary_uri is None else None

    def no_stable_url(self) -> str:
        return "KServe reports no stable predictor to probe"

    def no_canary_url(self) -> str:
        return "KServe reports no canary predictor (spec.canary) to probe"

    def render(self, name, spec, route):
        if route.canary_percent is None:
            pred = _named(predictor(name, spec, route.storage_uri, route.version), route.storage_uri)
            canary = []  # promotion and rollback drop the entry
        else:
            pred = _named(predictor(name, spec, route.stable_uri, route.stable_version), route.stable_uri)
            entry = _drop_none(_named(predictor(name, spec, route.storage_uri, route.version), route.storage_uri))
            if "model" in entry:  # v0.20's CRD requires the (container) name in a canary's model
                entry["model"] = {"name": "kserve-container", **entry["model"]}
            canary = [{"trafficPercent": route.canary_percent, "predictor": entry}]
        pred["canaryTrafficPercent"] = None
        return {"predictor": pred, "canary": canary}


def _named(pred: dict, storage_uri: str) -> dict:
    return {"name": predictor_name(storage_uri), **pred}


def endpoints(mode: TrafficMode, obs: Observed, st: dict, canary_active: bool) -> dict:
    """status.endpoints: where each version answers on its own ({stable|canary:
    {version, url}}), for shadow traffic and for pinning a job's requests to
    one version. A version without a URL of its own is left out."""
    out = {}
    stable_v, canary_v = st.get("stableVersion"), st.get("canaryVersion")
    if canary_active and canary_v and mode.deployed(st):
        canary = mode.canary_url(obs, st) if obs.latest_ready and mode.routed(obs, st) else None
        stable = mode.stable_url(obs, st)
        if canary:
            out["canary"] = {"version": canary_v, "url": canary}
    else:
        stable = mode.serving_url(obs) if obs.ready else None
    if stable and stable_v:
        out["stable"] = {"version": stable_v, "url": stable}
    return out


def traffic_mode(spec: SeparationModelSpec, kserve: KServeAPI = LEGACY, *, isvc: str = "", namespace: str = "",
                 domain: str = "cluster.local") -> TrafficMode:
    """The mode a SeparationModel's InferenceService runs in on the installed KServe."""
    if not spec.standard:
        return Knative(kserve)
    if kserve.standard_canary:
        return StandardCanary(kserve, isvc, namespace, domain)
    return Standard(kserve)


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


def predictor(name: str, spec: SeparationModelSpec, storage_uri: str, version: str | None = None) -> dict:
    """One predictor serving one release; None values delete keys in a merge patch."""
    args = [f"--model_name={name}"]
    p = spec.predictor
    node_selector = dict(p.node_selector)
    if p.resources.gpu.type:
        node_selector[GPU_PRODUCT_LABEL] = p.resources.gpu.type
    # The predictor refuses to load a model whose musicsplit.yaml version differs:
    # the analysis filters metrics on model_version, so a mismatch would
    # otherwise hold forever on "0 canary requests".
    env = [{"name": "MUSICSPLIT_EXPECTED_VERSION", "value": version or spec.model.version}]
    if spec.stems:
        env.append({"name": "MUSICSPLIT_STEMS", "value": ",".join(spec.stems)})
    if spec.cost_per_gpu_second is not None:
        env.append({"name": "MUSICSPLIT_GPU_PRICE_PER_SECOND", "value": str(spec.cost_per_gpu_second)})
    if p.max_audio_seconds is not None:
        env.append({"name": "MUSICSPLIT_MAX_AUDIO_SECONDS", "value": f"{p.max_audio_seconds:g}"})
    out = {
        "minReplicas": spec.replicas.min,
        "maxReplicas": spec.replicas.max,
        "nodeSelector": node_selector or None,
        "tolerations": p.tolerations or None,
        # The longest request the model allows, not KServe's 60 s route default.
        "timeout": p.timeout_s(),
    }
    if p.image:
        out["model"] = None
        out["containers"] = [{
            "name": "kserve-container", "image": p.image, "args": args,
            "env": [{"name": "STORAGE_URI", "value": storage_uri}, *env],
            "resources": _resources(spec),
        }]
    else:
        out["containers"] = None
        out["model"] = {
            "modelFormat": {"name": "musicsplit"}, "runtime": p.runtime, "storageUri": storage_uri,
            "args": args, "env": env, "resources": _resources(spec),
        }
    return out


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_drop_none(v) for v in d]
    return d


def inference_service(name: str, namespace: str, spec: SeparationModelSpec, route: Route,
                      mode: TrafficMode | None = None) -> dict:
    """The whole InferenceService (for create), without the None placeholders."""
    mode = mode or traffic_mode(spec)
    body = _drop_none(mode.render(name, spec, route))
    if not body.get("canary"):
        body.pop("canary", None)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "musicsplit.io/model": name},
            "annotations": annotations(spec, mode),
        },
        "spec": body,
    }


def annotations(spec: SeparationModelSpec, mode: TrafficMode | None = None) -> dict:
    mode = mode or traffic_mode(spec)
    return {
        MODE_ANNOTATION: mode.annotation(),
        # Tag routing gives the latest and the previous revision their own URLs
        # (latest-..., prev-...): the golden-set probe calls each directly.
        "serving.kserve.io/enable-tag-routing": "true",
    }


def patch(name: str, spec: SeparationModelSpec, route: Route, mode: TrafficMode | None = None) -> dict:
    """A JSON merge patch that moves an existing InferenceService to `route`."""
    mode = mode or traffic_mode(spec)
    return {"metadata": {"annotations": annotations(spec, mode)}, "spec": mode.render(name, spec, route)}

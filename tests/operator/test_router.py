"""The InferenceService the operator writes, and what it reads back from KServe."""

from __future__ import annotations

import functools
import re

import jsonschema
import pytest

from musicsplit.operator import kserve, router
from musicsplit.operator.router import LEGACY, V0_20, Route
from tests.operator.cluster import kserve_crd
from musicsplit.operator.spec import parse_spec

SPEC = parse_spec({
    "model": {"architecture": "htdemucs", "version": "4.0.1", "storageUri": "gs://m/htdemucs/4.0.1"},
    "predictor": {"resources": {"gpu": {"count": 1, "type": "NVIDIA-L4"}, "memory": "8Gi"},
                  "nodeSelector": {"pool": "gpu"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "replicas": {"min": 1, "max": 4}, "stems": ["vocals", "drums"], "costPerGpuSecond": 0.0002,
})


def test_inference_service_runs_the_predictor_with_the_canary_percent():
    isvc = router.inference_service("htdemucs", "ml", SPEC, Route("gs://m/htdemucs/4.0.1", 10))
    pred = isvc["spec"]["predictor"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["metadata"]["namespace"] == "ml"
    assert pred["canaryTrafficPercent"] == 10 and (pred["minReplicas"], pred["maxReplicas"]) == (1, 4)
    assert pred["model"]["storageUri"] == "gs://m/htdemucs/4.0.1" and pred["model"]["runtime"] == "musicsplit"
    assert pred["model"]["args"] == ["--model_name=htdemucs"]
    assert pred["model"]["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "8Gi"}
    assert pred["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pred["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert None not in pred.values()


def test_the_cpu_example_asks_for_cores_and_no_gpu_node():
    """manifests/examples/htdemucs-cpu.yaml schedules on any node: no GPU limit, no GPU
    Feature Discovery nodeSelector, no toleration Knative would need a feature flag for."""
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests/examples/htdemucs-cpu.yaml").read_text())
    spec = parse_spec(doc["spec"])
    pred = router.inference_service("htdemucs-cpu", "default", spec, Route(spec.model.storage_uri, None))["spec"]["predictor"]
    assert pred["model"]["resources"] == {"limits": {"cpu": "4", "memory": "8Gi"},
                                          "requests": {"cpu": "4", "memory": "8Gi"}}
    assert "nodeSelector" not in pred and "tolerations" not in pred
    assert pred["model"]["storageUri"] == "hf://adefossez/HTDemucs"


def test_promotion_patch_removes_the_canary_percent():
    p = router.patch("htdemucs", SPEC, Route("gs://m/htdemucs/4.0.1", None))
    assert "canaryTrafficPercent" in p["spec"]["predictor"] and p["spec"]["predictor"]["canaryTrafficPercent"] is None


def test_custom_image_uses_a_container_with_storage_uri():
    spec = parse_spec({**SPEC.model_dump(by_alias=True), "predictor": {"image": "ghcr.io/x/musicsplit:1"}})
    pred = router.inference_service("m", "ns", spec, Route("s3://b/m", None))["spec"]["predictor"]
    assert "model" not in pred and pred["containers"][0]["image"] == "ghcr.io/x/musicsplit:1"
    assert {"name": "STORAGE_URI", "value": "s3://b/m"} in pred["containers"][0]["env"]


def test_observe_reads_kserve_status():
    isvc = router.inference_service("m", "ns", SPEC, Route("gs://new", 25))
    isvc["status"] = {
        "url": "http://m.ns.example.com",
        "conditions": [{"type": "Ready", "status": "True"}],
        "components": {"predictor": {
            "latestCreatedRevision": "m-predictor-00002", "latestReadyRevision": "m-predictor-00002",
            "traffic": [
                {"revisionName": "m-predictor-00002", "percent": 25, "latestRevision": True, "tag": "latest",
                 "url": "http://latest-m"},
                {"revisionName": "m-predictor-00001", "percent": 75, "latestRevision": False, "tag": "prev",
                 "url": "http://prev-m"},
            ]}},
    }
    o = router.observe(isvc)
    assert o.exists and o.ready and o.latest_ready and o.latest_percent == 25 and o.canary_percent == 25
    assert o.storage_uri == "gs://new" and o.urls == {"latest": "http://latest-m", "prev": "http://prev-m"}
    assert not router.observe(None).exists


def _env(pred: dict) -> list[dict]:
    return pred["model"]["env"] if pred.get("model") else pred["containers"][0]["env"]


def test_predictor_is_told_which_version_it_must_load():
    bare = parse_spec({"model": SPEC.model.model_dump(by_alias=True)})
    custom = parse_spec({**SPEC.model_dump(by_alias=True), "predictor": {"image": "ghcr.io/x/musicsplit:1"}})
    for spec in (SPEC, bare, custom):
        pred = router.inference_service("m", "ns", spec, Route("gs://m/htdemucs/4.0.1", None))["spec"]["predictor"]
        assert {"name": "MUSICSPLIT_EXPECTED_VERSION", "value": "4.0.1"} in _env(pred)
        assert {"name": "MUSICSPLIT_EXPECTED_VERSION", "value": "4.0.1"} in _env(
            router.patch("m", spec, Route("gs://x", None))["spec"]["predictor"])


def _raw(status: dict, generation: int = 2) -> dict:
    isvc = router.inference_service("m", "ns", SPEC.model_copy(update={"deployment_mode": "RawDeployment"}),
                                    Route("gs://new", None))
    isvc["metadata"]["generation"] = generation
    isvc["status"] = {"deploymentMode": "RawDeployment", "url": "http://m.ns", **status}
    return isvc


def test_raw_deployment_is_ready_from_its_conditions_without_revisions():
    # What KServe's PropagateRawStatus writes: conditions and URL, no revisions;
    # observedGeneration is the Deployment's, not the InferenceService's.
    ready = [{"type": "IngressReady", "status": "True"},
             {"type": "PredictorReady", "status": "True", "reason": "NewReplicaSetAvailable"},
             {"type": "Ready", "status": "True"}]
    o = router.observe(_raw({"conditions": ready, "observedGeneration": 7}))
    assert o.ready and o.latest_ready and o.storage_uri == "gs://new" and o.url == "http://m.ns" and not o.failure

    rolling = [{"type": "PredictorReady", "status": "Unknown", "reason": "ReplicaSetUpdated"},
               {"type": "Ready", "status": "Unknown", "reason": "ReplicaSetUpdated"}]
    o = router.observe(_raw({"conditions": rolling, "observedGeneration": 2}))
    assert not o.latest_ready and not o.failure

    stuck = [{"type": "PredictorReady", "status": "False", "reason": "ProgressDeadlineExceeded",
              "message": "ReplicaSet has timed out progressing."}]
    o = router.observe(_raw({"conditions": stuck}))
    assert not o.latest_ready and o.failure.startswith("ProgressDeadlineExceeded")


def test_a_model_load_failure_counts_only_while_it_blocks_the_transition():
    info = {"reason": "ModelLoadFailed", "message": "version 3.0 != expected 4.0.1"}
    ok = [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}]
    blocked = router.observe(_raw({"conditions": [], "modelStatus": {
        "transitionStatus": "BlockedByFailedLoad", "lastFailureInfo": info}}))
    assert blocked.failure == "ModelLoadFailed: version 3.0 != expected 4.0.1"
    stuck = [{"type": "PredictorReady", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}]
    both = router.observe(_raw({"conditions": stuck, "modelStatus": {
        "transitionStatus": "BlockedByFailedLoad", "lastFailureInfo": info}}))
    assert both.failure == "ProgressDeadlineExceeded: timed out; ModelLoadFailed: version 3.0 != expected 4.0.1"
    # KServe never clears lastFailureInfo: a later, healthy model is not failed by it.
    later = router.observe(_raw({"conditions": ok, "modelStatus": {"transitionStatus": "UpToDate",
                                                                    "lastFailureInfo": info}}))
    assert later.failure is None and later.latest_ready


# ---------------------------------------------------------------- KServe v0.20: mode names, Standard-mode canaries


STD = SPEC.model_copy(update={"deployment_mode": "Standard"})
RAW = SPEC.model_copy(update={"deployment_mode": "RawDeployment"})
KN = SPEC.model_copy(update={"deployment_mode": "Knative"})
STABLE_URI, CANARY_URI = "gs://m/htdemucs/4.0.0", "gs://m/htdemucs/4.0.1"


@pytest.mark.parametrize("spec, kserve_api, annotation, mode", [
    (SPEC, LEGACY, "Serverless", "Knative"), (KN, LEGACY, "Serverless", "Knative"),
    (SPEC, V0_20, "Knative", "Knative"), (KN, V0_20, "Knative", "Knative"),
    (RAW, LEGACY, "RawDeployment", "Standard"), (STD, LEGACY, "RawDeployment", "Standard"),
    (RAW, V0_20, "Standard", "StandardCanary"), (STD, V0_20, "Standard", "StandardCanary"),
])
def test_either_vocabulary_in_the_spec_is_written_in_the_installed_kserves(spec, kserve_api, annotation, mode):
    m = router.traffic_mode(spec, kserve_api)
    assert m.name == mode
    isvc = router.inference_service("m", "ns", spec, Route(STABLE_URI, None), m)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == annotation


@pytest.mark.parametrize("mode_name", ["Standard", "RawDeployment"])
def test_standard_mode_is_read_in_both_vocabularies(mode_name):
    isvc = router.inference_service("m", "ns", STD, Route(STABLE_URI, None), router.traffic_mode(STD, V0_20))
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Knative"  # status is KServe's word
    isvc["status"] = {"deploymentMode": mode_name, "conditions": [{"type": "PredictorReady", "status": "True"}]}
    o = router.observe(isvc)
    # No revisions in Standard mode: ready from PredictorReady, never waiting for revisions that never come.
    assert o.standard and o.latest_ready and o.storage_uri == STABLE_URI


@functools.lru_cache(maxsize=None)
def _validator(version: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(kserve_crd(version)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _validate(isvc: dict, version: str) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(version).iter_errors(isvc)]
    assert not errors, errors


@pytest.mark.parametrize("spec, kserve_api", [(SPEC, LEGACY), (RAW, LEGACY), (SPEC, V0_20), (STD, V0_20)])
@pytest.mark.parametrize("route", [Route(CANARY_URI, None, "4.0.1"), Route(CANARY_URI, 10, "4.0.1", STABLE_URI, "4.0.0")])
def test_rendered_inference_services_are_valid_for_kserves_real_crd(spec, kserve_api, route):
    """Against KServe v0.20.0's own CRD (and the same without spec.canary for
    older ones), unknown fields refused (a real server would prune them)."""
    m = router.traffic_mode(spec, kserve_api)
    for custom in (False, True):
        s = spec.model_copy(update={"predictor": spec.predictor.model_copy(update={"image": "ghcr.io/x/m:1"})}) \
            if custom else spec
        _validate(router.inference_service("m", "ns", s, route, m), "0.20" if kserve_api.standard_canary else "0.19")


def test_a_standard_canary_is_a_named_spec_canary_entry_and_promotion_points_the_predictor_at_it():
    m = router.traffic_mode(STD, V0_20)
    spec = m.render("m", STD, Route(CANARY_URI, 25, "4.0.1", STABLE_URI, "4.0.0"))
    stable_name, canary_name = router.predictor_name(STABLE_URI), router.predictor_name(CANARY_URI)
    assert stable_name != canary_name and re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", canary_name)
    assert spec["predictor"]["name"] == stable_name and spec["predictor"]["model"]["storageUri"] == STABLE_URI
    assert {"name": "MUSICSPLIT_EXPECTED_VERSION", "value": "4.0.0"} in spec["predictor"]["model"]["env"]
    [entry] = spec["canary"]
    assert entry["trafficPercent"] == 25 and entry["predictor"]["name"] == canary_name
    assert {"name": "MUSICSPLIT_EXPECTED_VERSION", "value": "4.0.1"} in entry["predictor"]["model"]["env"]
    promoted = m.render("m", STD, m.promotion({"canaryStorageUri": CANARY_URI, "canaryVersion": "4.0.1"}))
    assert promoted["predictor"]["name"] == canary_name and promoted["canary"] == []
    rolled = m.render("m", STD, m.rollback({"stableStorageUri": STABLE_URI, "stableVersion": "4.0.0"}, {}))
    assert rolled["predictor"]["name"] == stable_name and rolled["canary"] == []


def test_standard_canary_readiness_and_urls_come_from_canary_statuses():
    m = router.traffic_mode(STD, V0_20)
    isvc = router.inference_service("m", "ns", STD, Route(CANARY_URI, 25, "4.0.1", STABLE_URI, "4.0.0"), m)
    canary = router.predictor_name(CANARY_URI)
    isvc["status"] = {"deploymentMode": "Standard", "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "PredictorReady", "status": "True"},
        {"type": "CanaryPredictorReady", "status": "False", "reason": "CanaryNotReady"}],
        "canaryStatuses": [{"name": canary, "ready": False, "trafficPercent": 0, "modelStatus": {
            "transitionStatus": "BlockedByFailedLoad",
            "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no such model"}}}]}
    o = router.observe(isvc)
    assert o.route == (CANARY_URI, 25, STABLE_URI) and not o.latest_ready
    assert o.failure == "ModelLoadFailed: no such model"
    isvc["status"]["conditions"][2].update(status="True", reason="AllCanariesReady")
    isvc["status"]["canaryStatuses"] = [{"name": canary, "ready": True, "trafficPercent": 25}]
    o = router.observe(isvc)
    assert o.latest_ready and o.latest_percent == 25 and o.failure is None
    assert o.urls == {"latest": f"http://m-{canary}-predictor.ns.svc.cluster.local",
                      "prev": f"http://m-{router.predictor_name(STABLE_URI)}-predictor.ns.svc.cluster.local"}


def test_predictor_timeout_follows_the_longest_request_the_model_allows():
    pred = lambda s: router.inference_service("m", "ns", s, Route(STABLE_URI, None))["spec"]["predictor"]  # noqa: E731
    assert pred(SPEC)["timeout"] == 1260
    longer = SPEC.model_copy(update={"predictor": SPEC.predictor.model_copy(update={"max_audio_seconds": 3600})})
    assert pred(longer)["timeout"] == 3660
    assert {"name": "MUSICSPLIT_MAX_AUDIO_SECONDS", "value": "3600"} in pred(longer)["model"]["env"]
    explicit = SPEC.model_copy(update={"predictor": SPEC.predictor.model_copy(update={"timeout": "15m"})})
    assert pred(explicit)["timeout"] == 900


@pytest.mark.parametrize("version, found", [("0.20", V0_20), ("0.19", LEGACY)])
def test_kserve_is_told_apart_by_its_served_inference_service_schema(version, found):
    schema = kserve_crd(version, strict_fields=False)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    doc = {"components": {"schemas": {"io.kserve.serving.v1beta1.InferenceService": {
        **schema, "x-kubernetes-group-version-kind": [
            {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"}]}}}}
    assert kserve.from_schema(doc) == found
    assert kserve.from_schema({"components": {"schemas": {}}}) is None

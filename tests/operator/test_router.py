"""The InferenceService the operator writes, and what it reads back from KServe."""

from __future__ import annotations

from musicsplit.operator import router
from musicsplit.operator.router import Route
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

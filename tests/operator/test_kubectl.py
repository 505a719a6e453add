"""The operator for real (`musicsplit serve operator`) against kmock's Kubernetes
API emulator on 127.0.0.1, driven by the real `kubectl`, with the KServe
simulator playing KServe's controller. No Prometheus here: analyses hold
(tests/operator/test_e2e.py has the real one)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.kube import table
from tests.operator.cluster import (ISVC, SM, Cluster, KServeSimulator, Operator, operator_api_calls, operator_requests,
                                   rbac_grants)

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("kube")
    with Cluster(d) as cluster, KServeSimulator(cluster, broken={"gs://models/broken/9.9.9"}) as sim:
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, d / "operator.log", tick=0.5)
        try:
            yield cluster, sim, op
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]


@pytest.fixture(autouse=True)
def cleanup(env):
    """Each test's models go away after it: the operator's work stays proportional."""
    cluster = env[0]
    before = {k[2] for k in list(cluster.emu.objects) if k[0] == cluster.sm_resource}
    yield
    for key in list(cluster.emu.objects):
        if key[0] == cluster.sm_resource and key[2] not in before and key[2] != "htdemucs":
            cluster.kubectl("delete", "sm", key[2], "--ignore-not-found", "--wait=false")


def example(name: str, file: str = "htdemucs.yaml", **spec) -> dict:
    doc = yaml.safe_load((MANIFESTS / "examples" / file).read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["rollout"]["interval"] = "1s"
    # The simulated revisions' URLs serve nothing; the probe runs in test_e2e.py.
    doc["spec"]["analysis"]["goldenSet"] = {"builtin": False}
    for k, v in spec.items():
        doc["spec"][k] = {**doc["spec"].get(k, {}), **v} if isinstance(v, dict) else v
    return doc


def with_version(doc: dict, version: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["spec"]["model"]["version"] = version
    doc["spec"]["model"]["storageUri"] = f"gs://models/{doc['spec']['model']['architecture']}/{version}"
    return doc


def status(cluster: Cluster, name: str) -> dict:
    return (cluster.get(SM, name) or {}).get("status") or {}


def phase_is(cluster, name, phase, timeout=30.0):
    return cluster.wait(lambda: status(cluster, name).get("phase") == phase and status(cluster, name), timeout,
                        message=f"{name} phase {phase} (now {status(cluster, name).get('phase')})")


def condition(st: dict, type_: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == type_)


def event_reasons(cluster, name) -> list[str]:
    return [e.get("reason") for e in cluster.events() if (e.get("involvedObject") or {}).get("name") == name]


def metric(op: Operator, series: str) -> float | None:
    """One series' value from the operator's /metrics, e.g. 'name{a="b"}'."""
    name, _, labels = series.partition("{")
    want = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(",")) if labels else {}
    want = {k: v.strip('"') for k, v in want.items()}
    for family in text_string_to_metric_families(httpx.get(op.metrics_url, timeout=5).text):
        for s in family.samples:
            if s.name == name and s.labels == want:
                return s.value
    return None


def has_events(cluster, name, *reasons) -> bool:
    """kopf posts Events from a queue, a moment after the status patch: wait for them."""
    cluster.wait(lambda: set(reasons) <= set(event_reasons(cluster, name)), 10,
                 message=f"events {reasons} for {name} (have {event_reasons(cluster, name)})")
    return True


@pytest.mark.slow
def test_examples_apply_and_kubectl_get_shows_the_printer_columns(env):
    cluster, sim, op = env
    for f in ("htdemucs.yaml", "htdemucs_6s.yaml"):
        out = cluster.kubectl("apply", "-f", str(MANIFESTS / "examples" / f)).stdout
        assert "created" in out or "configured" in out
    phase_is(cluster, "htdemucs", "Succeeded")
    phase_is(cluster, "htdemucs-6s", "Succeeded")
    out = cluster.kubectl("get", "sm").stdout
    assert out.splitlines()[0].split() == ["NAME", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"]
    rows = {row["NAME"]: row for row in table(out)}
    # No canary: an empty cell, as a real API server's Table gives kubectl
    assert [rows["htdemucs"][c] for c in ("STABLE", "CANARY", "WEIGHT", "PHASE")] == ["4.0.0", "", "0", "Succeeded"]
    # the InferenceService is owned (deleting the model deletes it) and serves the predictor
    isvc = cluster.get(ISVC, "htdemucs")
    owner = isvc["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "SeparationModel" and owner["uid"] == cluster.get(SM, "htdemucs")["metadata"]["uid"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "gs://musicsplit-models/htdemucs/4.0.0"
    st = status(cluster, "htdemucs")
    assert st["history"][0]["outcome"] == "promoted" and st["observedGeneration"] == 1
    assert has_events(cluster, "htdemucs", "Deploying", "Promoted")


# What kubectl apply says about a bad spec: the same words from the emulator and from
# a real API server (tests/kube/test_kubectl.py runs these against one).
INVALID_SPECS = [
    (lambda s: s["model"].pop("storageUri"), "spec.model.storageUri: Required value"),
    (lambda s: s["model"].update(storageUri="/local/path"), "spec.model.storageUri: Invalid value"),
    (lambda s: s["rollout"].update(steps=[10, 150]), "spec.rollout.steps[1]: Invalid value: 150"),
    (lambda s: s.update(deploymentMode="Magic"), 'spec.deploymentMode: Unsupported value: "Magic"'),
    (lambda s: s["rollout"].update(interval="often"), "spec.rollout.interval: Invalid value"),
    (lambda s: s.update(replicaz=3), "spec.replicaz: field not declared in schema"),
    (lambda s: s["analysis"].update(maxErrorRate="low"), "spec.analysis.maxErrorRate: Invalid value"),
    (lambda s: s["analysis"].update(threshold=0), "spec.analysis.threshold: Invalid value: 0"),
    (lambda s: s["rollout"].update(onHoldDeadline="ignore"), 'spec.rollout.onHoldDeadline: Unsupported value: "ignore"'),
    (lambda s: s["analysis"].update(webhooks=[{"name": "a", "type": "pre-promotion", "url": "http://x/"}]),
     'spec.analysis.webhooks[0].type: Unsupported value: "pre-promotion"'),
    (lambda s: s["analysis"].update(webhooks=[{"name": "a", "url": "file:///etc/passwd"}]),
     "spec.analysis.webhooks[0].url: Invalid value"),
    # v1alpha1's boolean goldenSet is an object now (docs/adr/0107): {} is true, {builtin: false} false
    (lambda s: s["analysis"].update(goldenSet=True), "spec.analysis.goldenSet: Invalid value"),
    (lambda s: s["analysis"].update(goldenSet={"configMap": "Not_A_Name"}),
     "spec.analysis.goldenSet.configMap: Invalid value"),
    (lambda s: s["model"].update(released="2022-13-45"), "spec.model.released: Invalid value"),
]


@pytest.mark.slow
@pytest.mark.parametrize("mutate, words", INVALID_SPECS)
def test_invalid_specs_are_refused_by_kubectl_apply_with_a_clear_message(env, mutate, words):
    cluster, _, _ = env
    doc = example("refused")
    mutate(doc["spec"])
    p = cluster.apply(doc, check=False)
    assert p.returncode != 0 and words in p.stderr, p.stderr
    assert 'The SeparationModel "refused" is invalid' in p.stderr
    assert cluster.get(SM, "refused") is None


def test_spec_the_schema_cannot_judge_is_reported_in_status(env):
    cluster, _, _ = env
    cluster.apply(example("unordered", rollout={"steps": [50, 10]}))
    st = phase_is(cluster, "unordered", "Failed")
    cond = condition(st, "SpecValid")
    assert cond["status"] == "False" and "increase strictly" in cond["message"]
    assert cluster.get(ISVC, "unordered") is None
    assert has_events(cluster, "unordered", "InvalidSpec")


@pytest.mark.slow
def test_a_golden_set_configmap_is_read_and_what_is_wrong_with_it_recorded(env, tmp_path):
    """The ConfigMap a SeparationModel names (read with RBAC `get configmaps`):
    missing, then broken; the stable's golden-set record says which and why
    (nothing is sent to a predictor for a set that cannot be used)."""
    from tests.operator.test_goldenset import track_files

    cluster, _, _ = env
    cluster.apply(example("refsmodel", analysis={"goldenSet": {"configMap": "refs"}}))

    def record(words):
        return cluster.wait(lambda: words in ((b := status(cluster, "refsmodel").get("goldenBaseline")) or {}).get(
            "error", "") and b, 30, message=f"goldenBaseline error {words!r}")

    rec = record("ConfigMap default/refs (spec.analysis.goldenSet.configMap) not found")
    assert rec["errorReason"] == "GoldenSetUnavailable" and rec["goldenSet"] == "configMap:refs"
    assert rec["version"] == "4.0.0" and "meanSdr" not in rec
    # As users make one: kubectl create configmap --from-file (binaryData for wav files); the
    # create goes through `create -f` here, as kubectl sends kmock no protobuf that way.
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "song.mixture.wav").write_bytes(track_files(1)["mixture"])
    (tmp_path / "refs" / "song.kazoo.wav").write_bytes(track_files(1)["vocals"])
    made = cluster.kubectl("create", "configmap", "refs", f"--from-file={tmp_path / 'refs'}", "--dry-run=client",
                           "-o", "yaml").stdout
    cluster.kubectl("create", "-f", "-", input=made)
    assert "song.mixture.wav" in cluster.get("v1/configmaps", "refs")["binaryData"]
    rec = record("track song: unknown stem kazoo")
    assert rec["errorReason"] == "GoldenSetInvalid"


@pytest.mark.slow
def test_canary_holds_when_prometheus_is_unreachable_and_abort_rolls_back(env):
    cluster, _, _ = env
    base = example("holdme", rollout={"steps": [10, 50]})
    cluster.apply(base)
    phase_is(cluster, "holdme", "Succeeded")
    cluster.apply(with_version(base, "4.1.0"))
    st = cluster.wait(lambda: (s := status(cluster, "holdme")).get("lastAnalysis") and s, 20, message="an analysis")
    assert st["phase"] == "Progressing" and st["canaryWeight"] == 10 and st["canaryVersion"] == "4.1.0"
    assert cluster.get(ISVC, "holdme")["spec"]["predictor"]["canaryTrafficPercent"] == 10
    cond = condition(st, "AnalysisReady")
    assert cond["status"] == "False" and cond["reason"] == "PrometheusUnreachable"
    assert st["lastAnalysis"]["result"] == "hold"
    # Analysed again and again: still held at the same weight, never promoted blind.
    st = cluster.wait(lambda: (s := status(cluster, "holdme")).get("holds", 0) >= 2 and s, 20, message="two holds")
    assert st["phase"] == "Progressing" and st["canaryWeight"] == 10
    assert event_reasons(cluster, "holdme").count("AnalysisHeld") == 1
    held = metric(env[2], 'musicsplit_rollout_analysis_holds{name="holdme",namespace="default"}')
    assert held >= 2 and metric(env[2], 'musicsplit_rollout_canary_weight{name="holdme",namespace="default"}') == 10
    analysed = metric(env[2], 'musicsplit_rollout_analyses_total{name="holdme",namespace="default",result="hold"}')
    assert analysed >= held and metric(
        env[2], 'musicsplit_rollout_analyses_total{name="holdme",namespace="default",result="pass"}') is None

    cluster.kubectl("annotate", "sm", "holdme", "musicsplit.io/action=abort")
    st = phase_is(cluster, "holdme", "RolledBack")
    assert st["stableVersion"] == "4.0.0" and st["canaryWeight"] == 0
    assert st["history"][-1]["outcome"] == "aborted" and st["history"][-1]["version"] == "4.1.0"
    assert cluster.get(ISVC, "holdme")["spec"]["predictor"]["canaryTrafficPercent"] == 0
    cluster.wait(lambda: "musicsplit.io/action" not in cluster.get(SM, "holdme")["metadata"].get("annotations", {}),
                 10, message="the action annotation consumed")
    assert has_events(cluster, "holdme", "Aborted")
    # the operator's own metrics (alerts/operator.rules.yaml alerts on them)
    assert metric(env[2], 'musicsplit_rollouts_total{name="holdme",namespace="default",outcome="aborted"}') == 1
    assert metric(env[2], 'musicsplit_rollout_phase{name="holdme",namespace="default",phase="RolledBack"}') == 1
    row = table(cluster.kubectl("get", "sm", "holdme").stdout)[0]
    assert [row[c] for c in ("STABLE", "CANARY", "WEIGHT", "PHASE")] == ["4.0.0", "", "0", "RolledBack"]


@pytest.mark.slow
def test_pause_resume_and_manual_promote(env):
    cluster, _, _ = env
    base = example("manual", rollout={"steps": [20, 60]})
    cluster.apply(base)
    phase_is(cluster, "manual", "Succeeded")
    cluster.apply(with_version(base, "4.2.0"))
    phase_is(cluster, "manual", "Progressing")
    cluster.kubectl("patch", "sm", "manual", "--type", "merge", "-p", '{"spec":{"rollout":{"paused":true}}}')
    st = phase_is(cluster, "manual", "Paused")
    assert st["canaryWeight"] == 20
    cluster.kubectl("patch", "sm", "manual", "--type", "merge", "-p", '{"spec":{"rollout":{"paused":false}}}')
    phase_is(cluster, "manual", "Progressing")
    cluster.kubectl("annotate", "sm", "manual", "musicsplit.io/action=promote")
    st = phase_is(cluster, "manual", "Succeeded")
    assert st["stableVersion"] == "4.2.0" and "canaryVersion" not in st
    assert "canaryTrafficPercent" not in cluster.get(ISVC, "manual")["spec"]["predictor"]
    assert [h["outcome"] for h in st["history"]] == ["promoted", "promoted"]
    assert has_events(cluster, "manual", "Paused", "Resumed", "ManualPromotion", "Promoted")


def roll_out_a_broken_canary(cluster, name: str, **overrides) -> tuple[dict, dict]:
    """Deploy `name`, then a version the simulator never makes ready; (base, status once rolled back)."""
    base = example(name, **overrides)
    cluster.apply(base)
    phase_is(cluster, name, "Succeeded")
    bad = copy.deepcopy(base)
    bad["spec"]["model"].update(version="9.9.9", storageUri="gs://models/broken/9.9.9")
    cluster.apply(bad)
    return base, phase_is(cluster, name, "RolledBack")


@pytest.mark.slow
def test_canary_that_never_becomes_ready_is_rolled_back(env):
    cluster, _, _ = env
    _, st = roll_out_a_broken_canary(cluster, "broken")
    assert "RevisionFailed" in st["history"][-1]["reason"]
    assert has_events(cluster, "broken", "CanaryNotReady")


@pytest.mark.slow
def test_inference_service_deleted_by_hand_is_recreated(env):
    cluster, _, _ = env
    cluster.apply(example("recreate"))
    phase_is(cluster, "recreate", "Succeeded")
    cluster.kubectl("delete", "inferenceservices.serving.kserve.io", "recreate")
    assert has_events(cluster, "recreate", "InferenceServiceRecreated")
    isvc = cluster.wait(lambda: cluster.get(ISVC, "recreate"), 10, message="the InferenceService back")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "gs://musicsplit-models/htdemucs/4.0.0"
    assert phase_is(cluster, "recreate", "Succeeded")["stableVersion"] == "4.0.0"


def isvc_requests(cluster: Cluster, name: str, since: int) -> list:
    """The operator's requests on InferenceService `name` (by URL, or by body for a create)."""
    return [r for r in operator_requests(cluster, since) if r.resource is not None
            and r.resource.plural == "inferenceservices"
            and (r.name == name or ((r.data or {}).get("metadata") or {}).get("name") == name)]


@pytest.mark.slow
def test_model_deleted_mid_rollout_takes_its_inference_service_with_it(env):
    cluster, _, op = env
    cluster.apply(example("bystander"))  # its ticks show the operator still reconciling
    base = example("shortlived")
    cluster.apply(base)
    phase_is(cluster, "shortlived", "Succeeded")
    phase_is(cluster, "bystander", "Succeeded")
    cluster.apply(with_version(base, "5.0.0"))
    phase_is(cluster, "shortlived", "Progressing")
    cluster.kubectl("delete", "sm", "shortlived", "--wait=false")
    cluster.wait(lambda: cluster.get(SM, "shortlived") is None, 30, message="the model gone (finalizer released)")
    cluster.wait(lambda: cluster.get(ISVC, "shortlived") is None, 10, message="garbage-collected InferenceService")
    gone = len(cluster.emu._requests)
    # Every tick reads its model's InferenceService: two more of the bystander's ticks
    # prove the operator ran on (and any tick of shortlived in flight at the deletion ended).
    cluster.wait(lambda: len(isvc_requests(cluster, "bystander", gone)) >= 2, 10,
                 message="two more reconcile ticks of another model")
    assert cluster.get(ISVC, "shortlived") is None
    assert isvc_requests(cluster, "shortlived", gone) == []  # not even read: its timer stopped
    assert op.proc.poll() is None


def test_a_tick_the_api_server_could_not_serve_is_retried_at_the_next_tick(env):
    """Not after kopf's 60 s backoff for a failed handler: a 503 (etcd away) says nothing about
    the model; the tick says so in one line and the next one, 0.5 s on, reads it again."""
    cluster, _, op = env
    base = example("unserved")
    cluster.apply(base)
    phase_is(cluster, "unserved", "Succeeded")
    said = "[default/unserved] the Kubernetes API server could not serve the request (HTTP 503"
    cluster.emu.refuse_reads[(SM, "unserved")] = (503, "ServiceUnavailable", "etcd is unavailable")
    try:
        cluster.wait(lambda: op.log().count(said) >= 2, 10, message="two ticks refused, each saying so")
    finally:
        del cluster.emu.refuse_reads[(SM, "unserved")]
    cluster.apply(with_version(base, "5.0.0"))
    st = phase_is(cluster, "unserved", "Progressing", timeout=10)
    assert st["canaryVersion"] == "5.0.0"
    assert "Timer 'reconcile' failed" not in op.log()


@pytest.mark.slow
def test_raw_deployment_states_that_there_is_no_traffic_split(env):
    cluster, _, _ = env
    cluster.apply(example("raw", deploymentMode="RawDeployment"))
    st = phase_is(cluster, "raw", "Succeeded")
    cond = condition(st, "TrafficSplit")
    assert cond["status"] == "False" and cond["reason"] == "RawDeploymentMode" and "no traffic split" in cond["message"]
    isvc = cluster.get(ISVC, "raw")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    # Ready from PredictorReady alone: RawDeployment reports no revisions (PropagateRawStatus).
    pred = isvc["status"]["components"]["predictor"]
    assert "latestCreatedRevision" not in pred and "latestReadyRevision" not in pred
    assert condition(isvc["status"], "PredictorReady")["status"] == "True"


@pytest.mark.slow
def test_raw_deployment_canary_that_never_becomes_ready_is_rolled_back_with_the_load_failure(env):
    cluster, _, _ = env
    base, st = roll_out_a_broken_canary(cluster, "rawbroken", deploymentMode="RawDeployment")
    # The predictor's own load error reaches the history (KServe's lastFailureInfo).
    assert "ModelLoadFailed: gs://models/broken/9.9.9 could not be loaded" in st["history"][-1]["reason"]
    assert has_events(cluster, "rawbroken", "CanaryNotReady")
    isvc = cluster.get(ISVC, "rawbroken")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == base["spec"]["model"]["storageUri"]
    # Redeployed stable becomes ready again, although KServe keeps the old lastFailureInfo.
    cluster.wait(lambda: condition(cluster.get(ISVC, "rawbroken")["status"], "PredictorReady")["status"] == "True",
                 30, message="stable Deployment ready again")


@pytest.mark.slow  # reads what the module's earlier (slow) tests did
def test_status_and_events_are_visible_with_kubectl(env):
    cluster, _, _ = env
    phase_is(cluster, "htdemucs", "Succeeded")
    out = cluster.kubectl("get", "sm", "htdemucs", "-o", "jsonpath={.status.history[0].version}").stdout
    assert out == "4.0.0"
    desc = cluster.kubectl("describe", "sm", "htdemucs").stdout
    assert re.search(r"Stable Version:\s+4\.0\.0", desc), desc
    events = [line.split() for line in desc.split("Events:")[1].splitlines()[3:]]
    assert [e[:2] for e in events] == [["Normal", "Deploying"], ["Normal", "Promoted"]], desc  # each said once



@pytest.mark.slow  # reads what the module's earlier (slow) tests did
def test_rbac_grants_exactly_what_the_operator_used(env):
    """Every API call the operator made during this module is allowed by
    manifests/rbac.yaml, and every rule there was needed (least privilege)."""
    cluster, _, _ = env
    allowed, used = rbac_grants(MANIFESTS / "rbac.yaml"), operator_api_calls(cluster)
    assert used <= allowed, f"used but not granted: {used - allowed}"
    peering = {a for a in allowed if a[1] == "clusterkopfpeerings"}  # exercised by test_peering.py
    # No call: OwnerReferencesPermissionEnforcement asks for it to admit blockOwnerDeletion on the
    # InferenceService (tests/kube/test_operator.py runs the operator with that plugin on).
    admission = {("musicsplit.io", "separationmodels/finalizers", "update")}
    assert allowed - peering - admission <= used, f"granted but never used: {allowed - peering - admission - used}"

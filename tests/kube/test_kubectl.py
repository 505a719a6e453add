"""What `kubectl` shows and refuses for SeparationModels on a real API server:
schema messages (the same words tests/operator's emulator gives), strict
field validation, CRD defaults that agree with the operator's, CEL rules,
`kubectl explain`, printer columns with and without `-o wide`. No operator
runs here: status is written by hand through the status subresource."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest

from musicsplit.operator.spec import ModelRef, Replicas, parse_spec
from tests.operator.test_kubectl import INVALID_SPECS, example

pytestmark = pytest.mark.slow
NS = "kubectl-behaviour"


@pytest.fixture(scope="module")
def kube_ns(kube):
    kube.server.ensure_namespace(NS)
    return kube


def apply(kube, doc, check=True):
    doc["metadata"]["namespace"] = NS
    return kube.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(doc), check=check)


def stored(kube, name) -> dict:
    return kube.get("musicsplit.io/v1alpha1/separationmodels", name, NS)


@pytest.mark.parametrize("mutate, words", [(m, w) for m, w in INVALID_SPECS if "not declared" not in w])
def test_invalid_specs_are_refused_with_the_words_the_emulator_uses(kube_ns, mutate, words):
    doc = example("refused")
    mutate(doc["spec"])
    p = apply(kube_ns, doc, check=False)
    assert p.returncode != 0 and words in p.stderr, p.stderr
    assert 'The SeparationModel "refused" is invalid' in p.stderr
    assert stored(kube_ns, "refused") is None


def test_an_unknown_field_is_refused_by_strict_field_validation(kube_ns):
    doc = example("typo")
    doc["spec"]["replicaz"] = 3
    doc["spec"]["model"]["storageURI"] = "gs://m/x"
    p = apply(kube_ns, doc, check=False)
    assert p.returncode != 0, p.stdout
    assert 'unknown field "spec.replicaz"' in p.stderr and 'unknown field "spec.model.storageURI"' in p.stderr
    assert stored(kube_ns, "typo") is None


def test_a_version_is_required_unless_the_registry_names_it(kube_ns):
    doc = example("noversion")
    del doc["spec"]["model"]["version"]
    p = apply(kube_ns, doc, check=False)
    assert "model.version is required unless storageUri names an MLflow model" in p.stderr, p.stderr
    doc["spec"]["model"]["storageUri"] = "mlflow://models/separator@champion"
    apply(kube_ns, doc)


def test_server_defaults_are_the_operators_and_never_name_a_field_the_user_left_out(kube_ns):
    doc = example("defaults")
    doc["spec"].update(replicas={"min": 2}, rollout={}, predictor={}, analysis={"webhooks": [
        {"name": "gate", "url": "http://gate.example/"}]})
    doc["spec"].pop("deploymentMode", None)
    p = apply(kube_ns, doc)
    assert "Warning" not in p.stderr, p.stderr
    spec = stored(kube_ns, "defaults")["spec"]
    assert spec["replicas"] == {"min": 2}  # no max of 1 below the min the user asked for
    assert spec["rollout"] == {"interval": "1m", "progressDeadline": "10m", "paused": False,
                               "onHoldDeadline": "rollback"}
    assert spec["deploymentMode"] == "Serverless" and spec["predictor"] == {"runtime": "musicsplit"}
    assert spec["analysis"]["webhooks"] == [{"name": "gate", "url": "http://gate.example/", "type": "rollout",
                                             "timeout": "10s"}]
    # The operator reads the stored spec as it reads what the user wrote.
    assert parse_spec(spec) == parse_spec(doc["spec"])
    assert parse_spec(spec).replicas == Replicas(min=2, max=2)
    # A max below the min the user did set is refused, naming both.
    doc["spec"]["replicas"] = {"min": 3, "max": 2}
    p = apply(kube_ns, doc, check=False)
    assert "spec.replicas: Invalid value" in p.stderr and "replicas.max must be >= replicas.min" in p.stderr


def test_kubectl_explain_shows_the_operators_field_docs(kube_ns):
    out = kube_ns.kubectl("explain", "separationmodel.spec.model").stdout
    assert "The release to serve" in out
    for field in ("architecture", "version", "storageUri", "released"):
        assert re.search(rf"^\s+{field}\s+<string>", out, re.M), out
    flat = " ".join(kube_ns.kubectl("explain", "sm.spec.model.storageUri").stdout.split())
    assert " ".join(ModelRef.model_fields["storage_uri"].description.split()) in flat
    rollout = " ".join(kube_ns.kubectl("explain", "sm.spec.rollout.onHoldDeadline").stdout.split())
    assert "escalate - keep the canary's traffic" in rollout and 'ENUM: rollback escalate' in rollout.replace('"', "")


def test_printer_columns_and_the_wide_ones(kube_ns):
    apply(kube_ns, example("columns", deploymentMode="RawDeployment"))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {"phase": "Progressing", "stableVersion": "4.0.0", "canaryVersion": "4.1.0", "canaryWeight": 25,
              "lastAnalysis": {"time": now, "result": "hold", "reason": "PrometheusUnreachable"}}
    kube_ns.kubectl("patch", "sm", "columns", "-n", NS, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))
    table = kube_ns.kubectl("get", "sm", "columns", "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"]
    assert table[1].split()[:5] == ["columns", "4.0.0", "4.1.0", "25", "Progressing"]
    wide = kube_ns.kubectl("get", "sm", "columns", "-n", NS, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "STABLE", "CANARY", "WEIGHT", "PHASE", "VERSION", "MODE", "ANALYSIS",
                               "ANALYSED", "AGE"]
    row = wide[1].split()
    assert row[:8] == ["columns", "4.0.0", "4.1.0", "25", "Progressing", "4.0.0", "RawDeployment", "hold"]
    assert re.fullmatch(r"\d+s", row[8]), row  # a date column: how long ago

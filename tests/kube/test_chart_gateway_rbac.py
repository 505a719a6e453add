"""The chart's gateway may read what version pinning needs, on a real API server:
its ServiceAccount's token, from the TokenRequest API as a pod gets it, lists the
SeparationModels in the models' namespace through the gateway's own
CanaryDirectory and reads the per-version URLs in their status; without the
chart's Role the same read is refused (403)."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from musicsplit.gateway.upstream.canaries import CanaryDirectory
from tests.charts.conftest import NAMESPACE, render
from tests.kube.conftest import MANIFESTS

pytestmark = pytest.mark.slow

RELEASE = "pin"  # not the other tests' release: its objects are really created here
MODELS_NS = "pin-models"
SA = f"{RELEASE}-musicsplit-gateway"
ENDPOINTS = {"stable": {"version": "4.0.0", "url": "http://htdemucs-stable.pin-models.svc.cluster.local"},
             "canary": {"version": "4.1.0", "url": "http://htdemucs-canary.pin-models.svc.cluster.local"}}


@pytest.fixture(scope="module")
def chart():
    import helm_python as helm

    from tests.charts.conftest import CHART_DIR

    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def refresh(directory: CanaryDirectory) -> None:
    asyncio.run(directory.refresh())


def test_chart_lets_the_gateway_read_pinned_urls_and_only_with_its_role(kube, chart, tmp_path):
    objects = render(chart, {"gateway": {"modelsNamespace": MODELS_NS}}, name=RELEASE).objects
    account = [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == SA]
    rbac = [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    assert account[0]["automountServiceAccountToken"] is True
    assert {o["metadata"]["namespace"] for o in rbac} == {MODELS_NS} and len(rbac) == 2
    for ns in (NAMESPACE, MODELS_NS):
        kube.server.ensure_namespace(ns)
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(account))

    # A SeparationModel as the operator leaves it during a canary: its status names each version's URL.
    model = yaml.safe_load((MANIFESTS / "examples" / "htdemucs.yaml").read_text())
    model["metadata"]["namespace"] = MODELS_NS
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(model))
    kube.kubectl("patch", "separationmodel", "htdemucs", "-n", MODELS_NS, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": {"endpoints": ENDPOINTS}}))

    token = kube.server.service_account_token(NAMESPACE, SA)
    directory = CanaryDirectory(MODELS_NS, refresh_s=10.0,
                                kubeconfig=kube.server.kubeconfig(tmp_path / "gateway.kubeconfig", token,
                                                                  namespace=NAMESPACE))
    as_gateway = ("--as", f"system:serviceaccount:{NAMESPACE}:{SA}", "-n", MODELS_NS)
    try:
        # Without the chart's Role: the server refuses the gateway's list.
        with pytest.raises(ApiException) as refused:
            refresh(directory)
        assert refused.value.status == 403
        assert kube.kubectl("auth", "can-i", "list", "separationmodels.musicsplit.io", *as_gateway,
                            check=False).stdout.strip() == "no"

        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))

        def pinned():
            try:
                refresh(directory)
            except ApiException as e:
                if e.status != 403:  # RBAC takes effect when the server's authorizer sees the binding
                    raise
                return None
            return {v: directory.version_url("htdemucs", v) for v in ("4.0.0", "4.1.0")}

        urls = kube.wait(pinned, timeout=30, message="the gateway's token lists SeparationModels")
        assert urls == {"4.0.0": ENDPOINTS["stable"]["url"], "4.1.0": ENDPOINTS["canary"]["url"]}
        # Read-only (the status comes with the objects listed), and only there.
        can = {verb: kube.kubectl("auth", "can-i", *verb.split(), *as_gateway, check=False).stdout.strip()
               for verb in ("list separationmodels.musicsplit.io", "watch separationmodels.musicsplit.io",
                            "get separationmodels.musicsplit.io", "patch separationmodels.musicsplit.io", "get secrets")}
        assert can == {"list separationmodels.musicsplit.io": "yes", "watch separationmodels.musicsplit.io": "yes",
                       "get separationmodels.musicsplit.io": "yes",
                       "patch separationmodels.musicsplit.io": "no", "get secrets": "no"}
        assert kube.kubectl("auth", "can-i", "list", "separationmodels.musicsplit.io", "--as",
                            f"system:serviceaccount:{NAMESPACE}:{SA}", "-n", "default",
                            check=False).stdout.strip() == "no"
    finally:
        asyncio.run(directory.stop())

"""What a platform team does on day one, against a real API server: apply
manifests/ as its README says, and a server-side dry run of every object the
chart renders (defaults and each ci/ values file) into namespaces that enforce
PodSecurity `restricted`. The server's schemas, defaults, admission and RBAC
judge it, not ours."""

from __future__ import annotations

import pytest
import yaml

from tests.charts.conftest import NAMESPACE, VARIANTS, render
from tests.kube.conftest import MANIFESTS

pytestmark = pytest.mark.slow


def test_manifests_apply_as_the_readme_says(kube):
    m = MANIFESTS
    kube.kubectl("apply", "-f", str(m / "crd.yaml"), "-f", str(m / "peering-crd.yaml"))
    kube.kubectl("apply", "-f", str(m / "peering.yaml"), "-f", str(m / "rbac.yaml"), "-f", str(m / "operator.yaml"))
    kube.kubectl("apply", "-f", str(m / "servingruntime.yaml"))
    p = kube.kubectl("apply", "-f", str(m / "examples"))
    assert "Warning" not in p.stderr, p.stderr
    names = kube.kubectl("get", "sm", "-n", "default", "-o", "name").stdout.split()
    expected = {f"separationmodel.musicsplit.io/{yaml.safe_load(f.read_text())['metadata']['name']}"
                for f in (m / "examples").glob("*.yaml")}
    assert expected <= set(names)
    # The operator's ServiceAccount may do what the operator does, and no more.
    sa = "system:serviceaccount:musicsplit-system:musicsplit-operator"
    checks = {"update separationmodels.musicsplit.io --subresource=finalizers": "yes",
              "patch separationmodels.musicsplit.io --subresource=status": "yes",
              "patch separationmodels.musicsplit.io": "yes",
              "create inferenceservices.serving.kserve.io": "yes",
              "delete inferenceservices.serving.kserve.io": "no", "get secrets": "no"}
    can = {check: kube.kubectl("auth", "can-i", *check.split(), "-A", "--as", sa, check=False).stdout.strip()
           for check in checks}
    assert can == checks


@pytest.fixture(scope="module")
def chart():
    import helm_python as helm

    from tests.charts.conftest import CHART_DIR

    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_chart_object_passes_a_server_side_dry_run(kube, chart, variant):
    objects = render(chart, VARIANTS[variant]).objects
    namespaces = {o["metadata"].get("namespace") or NAMESPACE for o in objects if o["kind"] != "Namespace"}
    # The chart installs into an existing namespace (helm install -n, and ci/everything's `ml`:
    # charts/musicsplit/README.md says to create them); make them as a careful cluster admin does.
    for ns in sorted(namespaces):
        kube.server.ensure_namespace(ns)
        kube.kubectl("label", "namespace", ns, "--overwrite", "pod-security.kubernetes.io/enforce=restricted",
                     "pod-security.kubernetes.io/warn=restricted")
    # As docs/getting-started.md says to check a cluster: the chart names every namespace itself.
    p = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objects), check=False)
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr, p.stderr
    assert len([line for line in p.stdout.splitlines() if line.endswith("(server dry run)")]) == len(objects)

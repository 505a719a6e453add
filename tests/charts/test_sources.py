"""What the chart shares with the rest of the repository stays the same thing:
the CRDs and RBAC of manifests/, its example models, the predictor runtime,
and the rule files and dashboards it ships from alerts/ and grafana/."""

from __future__ import annotations

import copy
import json

import yaml

from . import schemas
from .conftest import CHART_DIR, ROOT, render

MANIFESTS = ROOT / "manifests"


def test_crds_are_the_manifests_files():
    shipped = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert shipped == {
        "separationmodels.musicsplit.io.yaml": (MANIFESTS / "crd.yaml").read_bytes(),
        "clusterkopfpeerings.kopf.dev.yaml": (MANIFESTS / "peering-crd.yaml").read_bytes(),
    }, "copy manifests/crd.yaml and manifests/peering-crd.yaml into charts/musicsplit/crds/"


def test_operator_cluster_role_is_manifests_rbac(rendered):
    manifest = next(d for d in yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()) if d["kind"] == "ClusterRole")
    for variant in rendered.values():
        role = variant.one("ClusterRole", "prod-musicsplit-operator")
        assert role["rules"] == manifest["rules"], "change both RBAC files together"
        binding = variant.one("ClusterRoleBinding", "prod-musicsplit-operator")
        deployment = variant.one("Deployment", "prod-musicsplit-operator")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": "musicsplit-system",
                                        "name": deployment["spec"]["template"]["spec"]["serviceAccountName"]}]


READER = "prod-musicsplit-gateway-separationmodel-reader"
READ_SEPARATION_MODELS = [{"apiGroups": ["musicsplit.io"], "resources": ["separationmodels"],
                           "verbs": ["get", "list", "watch"]}]


def gateway_env(out) -> dict[str, str | None]:
    container = out.one("Deployment", "prod-musicsplit-gateway")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_gateway_reads_separation_models_only_when_pinning_or_shadowing(chart):
    off = render(chart, {"gateway": {"pinVersions": False}})
    assert not off.of_kind("Role") and not off.of_kind("RoleBinding")
    assert off.one("ServiceAccount", "prod-musicsplit-gateway")["automountServiceAccountToken"] is False
    assert gateway_env(off)["MUSICSPLIT_GATEWAY_PIN_VERSIONS"] == "false"
    assert "MUSICSPLIT_GATEWAY_SHADOW_NAMESPACE" not in gateway_env(off)
    # Either feature alone, and both: one Role, in the namespace the gateway is told to read.
    for gateway in ({"modelsNamespace": "ml"}, {"pinVersions": False, "shadow": {"enabled": True, "namespace": "ml"}},
                    {"modelsNamespace": "ml", "shadow": {"enabled": True, "namespace": "ml"}}):
        out = render(chart, {"gateway": gateway})
        [role] = out.of_kind("Role")
        assert role["metadata"] == {**role["metadata"], "name": READER, "namespace": "ml"}, gateway
        assert role["rules"] == READ_SEPARATION_MODELS
        [binding] = out.of_kind("RoleBinding")
        assert binding["metadata"]["namespace"] == "ml" and binding["roleRef"]["name"] == READER
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prod-musicsplit-gateway",
                                        "namespace": "musicsplit-system"}]
        assert out.one("ServiceAccount", "prod-musicsplit-gateway")["automountServiceAccountToken"] is True
        assert gateway_env(out)["MUSICSPLIT_GATEWAY_SHADOW_NAMESPACE"] == "ml"


def test_gateway_pins_versions_by_default_in_the_models_namespace(chart, rendered):
    default = rendered["default"]
    assert gateway_env(default)["MUSICSPLIT_GATEWAY_PIN_VERSIONS"] == "true"
    assert default.one("Role", READER)["metadata"]["namespace"] == "musicsplit-system"
    # The example models' namespace when the chart makes them there.
    out = render(chart, {"examples": {"enabled": True, "namespace": "ml"}})
    assert out.one("Role", READER)["metadata"]["namespace"] == "ml"
    assert gateway_env(out)["MUSICSPLIT_GATEWAY_SHADOW_NAMESPACE"] == "ml"


def test_example_models_are_manifests_examples(chart):
    out = render(chart, {"examples": {"enabled": True, "namespace": "ml",
                                      "models": ["htdemucs", "htdemucs-6s", "htdemucs-cpu"]}})
    assert schemas.errors(out.of_kind("SeparationModel")) == {}
    for name, path in (("htdemucs", "htdemucs.yaml"), ("htdemucs-6s", "htdemucs_6s.yaml"),
                       ("htdemucs-cpu", "htdemucs-cpu.yaml")):
        example = yaml.safe_load((MANIFESTS / "examples" / path).read_text())
        model = out.one("SeparationModel", name)
        assert model["metadata"]["namespace"] == "ml"
        # The only difference: analysed by the Prometheus the operator is given.
        assert model["spec"]["analysis"].pop("prometheusUrl") == "http://prometheus-operated.monitoring.svc:9090"
        expected = copy.deepcopy(example["spec"])
        expected.get("analysis", {}).pop("prometheusUrl", None)
        assert model["spec"] == expected, name


def test_example_models_use_the_bundled_prometheus_with_quickstart(chart):
    out = render(chart, {"examples": {"enabled": True}, "quickstart": {"enabled": True}})
    url = out.one("SeparationModel", "htdemucs")["spec"]["analysis"]["prometheusUrl"]
    service = out.one("Service", "prod-musicsplit-prometheus")
    assert url == f"http://{service['metadata']['name']}.musicsplit-system.svc:{service['spec']['ports'][0]['port']}"
    env = {e["name"]: e.get("value") for e in out.one("Deployment", "prod-musicsplit-operator")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MUSICSPLIT_OPERATOR_PROMETHEUS_URL"] == url


def test_runtime_runs_the_predictor_as_manifests_servingruntime_does(rendered):
    """manifests/servingruntime.yaml is tested against a real predictor
    (tests/predictor/test_servingruntime.py); the chart's runtime serves it the same way."""
    manifest = yaml.safe_load((MANIFESTS / "servingruntime.yaml").read_text())
    for name, variant in rendered.items():
        runtime = variant.one("ClusterServingRuntime", "musicsplit")
        assert runtime["spec"]["supportedModelFormats"] == manifest["spec"]["supportedModelFormats"]
        assert runtime["spec"]["protocolVersions"] == manifest["spec"]["protocolVersions"]
        assert runtime["metadata"]["annotations"] == manifest["metadata"]["annotations"]
        ours, theirs = runtime["spec"]["containers"][0], manifest["spec"]["containers"][0]
        for key in ("name", "args", "ports", "readinessProbe", "livenessProbe"):
            assert ours[key] == theirs[key], (name, key)


def test_rule_files_and_dashboards_ship_from_the_repository(tmp_path):
    # Symlinks into the repository, so nothing is copied and nothing drifts ...
    assert (CHART_DIR / "files" / "alerts").resolve() == ROOT / "alerts"
    assert (CHART_DIR / "files" / "dashboards").resolve() == ROOT / "grafana" / "dashboards"
    # ... and a packaged chart holds the files themselves.
    import tarfile

    import helm_python as helm

    with tarfile.open(helm.package(CHART_DIR, destination=tmp_path)) as archive:
        packaged = {m.name: m for m in archive.getmembers()}
        for path in (ROOT / "alerts").glob("*.rules.yaml"):
            member = packaged[f"musicsplit/files/alerts/{path.name}"]
            assert member.isfile() and archive.extractfile(member).read() == path.read_bytes()


def test_every_rule_file_ships_as_a_prometheus_rule_and_to_the_bundled_prometheus(chart):
    out = render(chart, {"monitoring": {"prometheusRule": {"enabled": True}}, "quickstart": {"enabled": True}})
    files = sorted((ROOT / "alerts").glob("*.rules.yaml"))
    assert files
    rules = {r["metadata"]["name"]: r["spec"]["groups"] for r in out.of_kind("PrometheusRule")}
    configmap = out.one("ConfigMap", "prod-musicsplit-rules")["data"]
    for path in files:
        groups = yaml.safe_load(path.read_text())["groups"]
        assert rules[f"prod-musicsplit-{path.name.removesuffix('.rules.yaml')}"] == groups
        assert yaml.safe_load(configmap[path.name])["groups"] == groups
    assert len(rules) == len(files) and len(configmap) == len(files)


def test_every_dashboard_ships_for_the_sidecar_and_the_bundled_grafana(chart_copy):
    """Any JSON dropped into grafana/dashboards ships, whatever its name (the
    glob, not a list); here two stand-ins in a copy of the chart."""
    import helm_python as helm

    dashboards = chart_copy / "files" / "dashboards"
    for name, title in (("musicsplit-overview.json", "Overview"), ("Canary_Rollouts.json", "Canary")):
        (dashboards / name).write_text(json.dumps({"title": title, "panels": []}))
    shipped = sorted(p.name for p in dashboards.glob("*.json"))
    with helm.Chart.load(chart_copy) as copy_:
        out = render(copy_, {"monitoring": {"dashboards": {"enabled": True}}, "quickstart": {"enabled": True}})
    maps = [c for c in out.of_kind("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(k for c in maps for k in c["data"]) == shipped
    for c in maps:
        assert c["metadata"]["annotations"]["grafana_folder"] == "musicsplit"
        (name, text), = c["data"].items()
        assert json.loads(text) == json.loads((dashboards / name).read_text())
    grafana = out.one("Deployment", "prod-musicsplit-grafana")["spec"]["template"]["spec"]
    volume = next(v for v in grafana["volumes"] if v["name"] == "dashboards")
    assert sorted(s["configMap"]["name"] for s in volume["projected"]["sources"]) == sorted(
        c["metadata"]["name"] for c in maps)

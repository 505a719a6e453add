"""How the chart scrapes and alerts: every scrape (ServiceMonitors, PodMonitor,
the bundled Prometheus) labels its targets musicsplit_component, the predictor
PodMonitor selects exactly the pods KServe makes for the operator's
InferenceServices, the bundled Prometheus' configuration is one promtool
accepts, and the alerts it ships hold whatever the scrape jobs are called."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT, render

COMPONENTS = {"operator", "gateway", "predictor"}


def static_label(relabelings: list[dict], label: str, target_key: str = "targetLabel") -> str | None:
    """The constant a relabeling list writes into `label` (no source labels)."""
    for r in relabelings:
        if r.get(target_key) == label and not r.get("sourceLabels", r.get("source_labels")):
            return r["replacement"]
    return None


@pytest.fixture(scope="module")
def observed(chart):
    return render(chart, {"monitoring": {"serviceMonitors": {"enabled": True}, "prometheusRule": {"enabled": True}},
                          "quickstart": {"enabled": True}})


@pytest.fixture(scope="module")
def prometheus_config(observed) -> dict:
    return yaml.safe_load(observed.one("ConfigMap", "prod-musicsplit-prometheus")["data"]["prometheus.yml"])


def test_every_monitor_labels_its_targets_with_the_component(observed):
    monitors = observed.of_kind("ServiceMonitor") + observed.of_kind("PodMonitor")
    found = {}
    for m in monitors:
        for endpoint in m["spec"].get("endpoints", []) + m["spec"].get("podMetricsEndpoints", []):
            found[m["metadata"]["name"]] = static_label(endpoint["relabelings"], "musicsplit_component")
    assert found == {"prod-musicsplit-operator": "operator", "prod-musicsplit-gateway": "gateway",
                     "prod-musicsplit-predictor": "predictor"}
    # The operator's series carry the SeparationModel's namespace: kept, not renamed.
    assert observed.one("ServiceMonitor", "prod-musicsplit-operator")["spec"]["endpoints"][0]["honorLabels"] is True


def test_service_monitors_select_services_that_expose_metrics(observed):
    for component in ("operator", "gateway"):
        monitor = observed.one("ServiceMonitor", f"prod-musicsplit-{component}")
        service = observed.one("Service", f"prod-musicsplit-{component}")
        labels = service["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
        port = next(p for p in service["spec"]["ports"] if p["name"] == monitor["spec"]["endpoints"][0]["port"])
        pod = observed.one("Deployment", f"prod-musicsplit-{component}")["spec"]["template"]["spec"]
        container_ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert port["targetPort"] == "metrics" and "metrics" in container_ports
    env = {e["name"]: e.get("value") for e in observed.one("Deployment", "prod-musicsplit-gateway")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    service_port = next(p for p in observed.one("Service", "prod-musicsplit-gateway")["spec"]["ports"]
                        if p["name"] == "metrics")
    assert env["MUSICSPLIT_GATEWAY_METRICS_PORT"] == str(service_port["port"]) == "9091"


def kserve_pod_labels(isvc: dict, runtime: dict | None) -> dict:
    """The labels KServe gives a predictor pod: the runtime's, the
    InferenceService's, then its own (kserve pkg/controller/v1beta1/
    inferenceservice/components/predictor.go, buildObjectMeta)."""
    return {**((runtime or {}).get("spec", {}).get("labels") or {}), **isvc["metadata"].get("labels", {}),
            "serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"}


def selected(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def relabel_keeps(relabelings: list[dict], meta: dict, snake: bool = False) -> bool:
    """Apply the `keep` steps of a relabeling list to a target's meta labels."""
    import re

    for r in relabelings:
        if r.get("action") != "keep":
            continue
        sources = r["source_labels" if snake else "sourceLabels"]
        value = ";".join(meta.get(s, "") for s in sources)
        if not re.fullmatch(r["regex"], value):
            return False
    return True


def pod_meta(labels: dict, container: str, port: int) -> dict:
    """A pod target's meta labels as Prometheus' Kubernetes discovery sets them."""
    meta = {f"__meta_kubernetes_pod_label_{k.replace('.', '_').replace('/', '_').replace('-', '_')}": v
            for k, v in labels.items()}
    return meta | {"__meta_kubernetes_pod_container_name": container,
                   "__meta_kubernetes_pod_container_port_number": str(port)}


def test_predictor_scrapes_select_the_operators_models_and_nothing_else(observed, prometheus_config):
    from musicsplit.operator import router
    from musicsplit.operator.router import Route
    from musicsplit.operator.spec import parse_spec

    runtime = observed.of_kind("ClusterServingRuntime")[0]
    spec = parse_spec({"model": {"architecture": "htdemucs", "version": "1", "storageUri": "gs://m/1"}})
    ours = kserve_pod_labels(router.inference_service("htdemucs", "ml", spec, Route("gs://m/1", None)), runtime)
    custom = parse_spec({"model": {"architecture": "htdemucs", "version": "1", "storageUri": "gs://m/1"},
                         "predictor": {"image": "registry.example/my-predictor:1"}})
    ours_custom_image = kserve_pod_labels(
        router.inference_service("mine", "ml", custom, Route("gs://m/1", None)), None)
    other = kserve_pod_labels({"metadata": {"name": "sklearn-iris", "labels": {}}}, None)

    monitor = observed.one("PodMonitor", "prod-musicsplit-predictor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    keep = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    job = next(j for j in prometheus_config["scrape_configs"] if j["job_name"] == "prod-musicsplit-predictor")
    for labels, wanted in ((ours, True), (ours_custom_image, True), (other, False)):
        assert selected(monitor["spec"]["selector"], labels) is wanted, labels
        assert relabel_keeps(job["relabel_configs"], pod_meta(labels, "kserve-container", 8080), snake=True) is wanted
    # Of a musicsplit pod, only the predictor's own port (not Knative's queue-proxy).
    assert relabel_keeps(keep, pod_meta(ours, "kserve-container", 8080))
    assert not relabel_keeps(keep, pod_meta(ours, "queue-proxy", 9091))
    assert not relabel_keeps(job["relabel_configs"], pod_meta(ours, "queue-proxy", 9091), snake=True)
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8080"


def test_bundled_prometheus_scrapes_like_the_monitors(prometheus_config):
    jobs = {j["job_name"]: j for j in prometheus_config["scrape_configs"]}
    components = {name: static_label(j.get("relabel_configs", []), "musicsplit_component", "target_label")
                  for name, j in jobs.items()}
    assert components == {"prometheus": None, "prod-musicsplit-operator": "operator",
                          "prod-musicsplit-gateway": "gateway", "prod-musicsplit-predictor": "predictor"}
    assert jobs["prod-musicsplit-operator"]["honor_labels"] is True
    assert prometheus_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "prod-musicsplit-alertmanager:9093"]


# Prometheus' kubernetes_sd_config fields (configuration docs, Prometheus 2.x).
KUBERNETES_SD_FIELDS = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
                        "basic_auth", "authorization", "oauth2", "tls_config", "proxy_url", "follow_redirects"}


def test_bundled_prometheus_config_and_rules_pass_promtool(observed, tmp_path):
    """promtool checks the whole file and the rule files it loads. Debian's
    Prometheus is built without Kubernetes discovery (its promtool refuses
    kubernetes_sd_configs), so that one block is checked against the fields
    Prometheus documents and handed to promtool as an empty static config."""
    assert shutil.which("promtool"), "promtool: .ci/install-charts.sh"
    config = yaml.safe_load(observed.one("ConfigMap", "prod-musicsplit-prometheus")["data"]["prometheus.yml"])
    for job in config["scrape_configs"]:
        for sd in job.pop("kubernetes_sd_configs", []):
            assert set(sd) <= KUBERNETES_SD_FIELDS and sd["role"] == "pod", sd
            assert set(sd.get("namespaces", {})) <= {"names", "own_namespace"}, sd
            job.setdefault("static_configs", [{"targets": []}])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    rules = tmp_path / "rules"  # where the pod mounts them, relative to the config
    rules.mkdir()
    for name, text in observed.one("ConfigMap", "prod-musicsplit-rules")["data"].items():
        (rules / name).write_text(text)
    out = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("rules found") == len(list(rules.iterdir())) > 0, out.stdout


def rendered_alerts(observed) -> list[dict]:
    return [rule for r in observed.of_kind("PrometheusRule") for g in r["spec"]["groups"]
            for rule in g["rules"] if "alert" in rule]


def test_every_alert_has_a_severity_and_a_runbook(observed):
    alerts = rendered_alerts(observed)
    assert alerts
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning", "info", "none"}, rule["alert"]
        assert (ROOT / "runbooks" / f"{rule['alert']}.md").is_file(), f"runbooks/{rule['alert']}.md"
        assert rule["annotations"]["runbook_url"].endswith(f"/runbooks/{rule['alert']}.md")


def test_runbook_links_follow_the_runbook_base_url(chart, observed):
    """Pages and Slack messages link runbooks where the team serves them: the PrometheusRules
    and the bundled Prometheus' rule files alike."""
    base = "https://wiki.example.org/sre/musicsplit-runbooks"
    moved = render(chart, {"monitoring": {"prometheusRule": {"enabled": True}, "runbookBaseUrl": base + "/"},
                           "quickstart": {"enabled": True}})
    alerts = rendered_alerts(moved)
    assert len(alerts) == len(rendered_alerts(observed)) > 0
    for rule in alerts:
        assert rule["annotations"]["runbook_url"] == f"{base}/{rule['alert']}.md"
    bundled = [rule for text in moved.one("ConfigMap", "prod-musicsplit-rules")["data"].values()
               for group in yaml.safe_load(text)["groups"] for rule in group["rules"] if "alert" in rule]
    assert {r["alert"]: r["annotations"]["runbook_url"] for r in bundled} == {
        r["alert"]: r["annotations"]["runbook_url"] for r in alerts}
    # the default: the chart's source repository, as the rule files say
    default = {r["alert"]: r["annotations"]["runbook_url"] for r in rendered_alerts(observed)}
    from_files = {rule["alert"]: rule["annotations"]["runbook_url"] for path in (ROOT / "alerts").glob("*.rules.yaml")
                  for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    assert default == from_files


def scrape_targets(observed, prometheus_config) -> dict[str, list[dict]]:
    """The `up` series each way of scraping produces, per component: job names
    as prometheus-operator (service or namespace/podmonitor) and the bundled
    Prometheus name them."""
    ns = "musicsplit-system"
    operator_style = {"operator": f"{ns}/prod-musicsplit-operator", "gateway": "prod-musicsplit-gateway",
                      "predictor": f"{ns}/prod-musicsplit-predictor"}
    bundled = {c: f"prod-musicsplit-{c}" for c in COMPONENTS}
    assert {j["job_name"] for j in prometheus_config["scrape_configs"]} >= set(bundled.values())
    return {c: [{"job": jobs[c], "musicsplit_component": c, "namespace": ns, "instance": f"10.0.0.{i}:8080"}
                for i, jobs in enumerate((operator_style, bundled))] for c in COMPONENTS}


def promtool_test(tmp_path, observed, series: list[tuple[dict, str]], checks: list[dict]):
    """`promtool test rules` of the chart's alerts over these `up` series."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [g for r in observed.of_kind("PrometheusRule")
                                                for g in r["spec"]["groups"]]}))
    test = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": "up{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                          "values": values} for labels, values in series],
        "promql_expr_test": checks}]}
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test))
    return subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)


def firing(alert: str, fires: bool, at: str = "40m") -> dict:
    """Whether `alert` fires (once per component, or once per down target as
    MusicsplitPredictorDown does)."""
    expr = f'(count(ALERTS{{alertname="{alert}",alertstate="firing"}}) > bool 0) or vector(0)'
    return {"expr": expr, "eval_time": at, "exp_samples": [{"value": int(fires)}]}


@pytest.mark.slow
def test_target_alerts_hold_whatever_the_jobs_are_called(observed, prometheus_config, tmp_path):
    """An alert on `up` selects by musicsplit_component: quiet while every
    target the chart scrapes is up (whatever its job), firing when one
    component's targets are down. MusicsplitOperatorDown used to match
    job="musicsplit-operator" and fired forever under any other job name."""
    assert shutil.which("promtool"), "promtool: .ci/install-charts.sh"
    # `up` itself, not a metric whose name ends in _up (musicsplit_gateway_backend_up).
    up_alerts = [a for a in rendered_alerts(observed) if re.search(r"(?<![\w:])up\s*\{", a["expr"])]
    assert "MusicsplitOperatorDown" in {a["alert"] for a in up_alerts}
    targets = scrape_targets(observed, prometheus_config)
    for alert in up_alerts:
        assert "musicsplit_component" in alert["expr"] and "job=" not in alert["expr"].replace(" ", ""), alert
    all_up = [(t, "1x60") for ts in targets.values() for t in ts]
    out = promtool_test(tmp_path, observed, all_up, [firing(a["alert"], False) for a in up_alerts])
    assert out.returncode == 0, out.stdout + out.stderr
    fires = set()
    for component in COMPONENTS:
        series = [(t, "0x60" if c == component else "1x60") for c, ts in targets.items() for t in ts]
        for alert in up_alerts:
            if promtool_test(tmp_path, observed, series, [firing(alert["alert"], True)]).returncode == 0:
                fires.add(alert["alert"])
    assert fires == {a["alert"] for a in up_alerts}, "an alert on `up` that no component's outage fires"

"""`helm test` and NOTES.txt: after an install the chart says what to do next,
and its test hook asks the gateway and a predictor whether they are ready."""

from __future__ import annotations

from .conftest import render


def hook_pod(out) -> dict:
    pods = [p for p in out.of_kind("Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(pods) == 1
    return pods[0]


def test_helm_test_asks_the_gateway_and_the_first_predictor(chart):
    out = render(chart, {"gateway": {"endpoints": [
        {"model": "htdemucs", "url": "http://htdemucs-predictor.ml.svc.cluster.local"},
        {"model": "htdemucs", "url": "http://htdemucs-predictor.ml.us.example", "region": "us"}]}})
    pod = hook_pod(out)
    assert pod["spec"]["restartPolicy"] == "Never"
    urls = {c["name"]: c["args"][-1] for c in pod["spec"]["containers"]}
    service = out.one("Service", "prod-musicsplit-gateway")
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    assert urls == {
        "gateway": f"http://{service['metadata']['name']}:{http['port']}/v2/health/ready",
        "predictor": "http://htdemucs-predictor.ml.svc.cluster.local/v2/health/ready",
    }
    for container in pod["spec"]["containers"]:
        # curl fails the pod on a non-2xx answer; retries cover a model still loading.
        assert "--fail-with-body" in container["args"] and "--retry-all-errors" in container["args"]


def test_helm_test_asks_a_given_predictor_or_the_example_one(chart):
    given = hook_pod(render(chart, {"tests": {"predictorUrl": "http://mine.ml.svc:8080/"}}))
    assert {c["name"]: c["args"][-1] for c in given["spec"]["containers"]}["predictor"] == (
        "http://mine.ml.svc:8080/v2/health/ready")
    example = hook_pod(render(chart, {"examples": {"enabled": True, "namespace": "ml"}}))
    assert {c["name"]: c["args"][-1] for c in example["spec"]["containers"]}["predictor"] == (
        "http://htdemucs-predictor.ml.svc.cluster.local/v2/health/ready")


def test_notes_say_what_to_do_next(rendered):
    notes = rendered["default"].notes
    assert "kubectl -n musicsplit-system port-forward svc/prod-musicsplit-gateway 8080:8080" in notes
    assert "kubectl apply -f" in notes and "manifests/examples/htdemucs.yaml" in notes
    assert "helm test prod -n musicsplit-system" in notes
    assert "The gateway has no predictor endpoints yet" in notes
    assert "The API is open" in notes
    assert "Nothing scrapes musicsplit yet" in notes
    everything = rendered["everything"].notes
    assert "kubectl -n ml get sm" in everything
    assert "port-forward svc/prod-musicsplit-grafana 3000:3000" in everything
    assert "port-forward svc/prod-musicsplit-jaeger 16686:16686" in everything
    assert "The API is open" not in everything and "no predictor endpoints" not in everything
    assert "WARNING" not in everything  # PagerDuty and Slack are both set there


def test_notes_say_when_the_gateways_state_is_not_durable(chart, rendered):
    notes = rendered["default"].notes
    assert ("the gateway keeps its jobs, quota counters and pending callbacks (SQLite) and its uploads and "
            "results on an emptyDir") in " ".join(notes.split())
    assert "Not durable" not in rendered["everything"].notes  # PostgreSQL and S3 there
    assert "Not durable" not in render(chart, {"gateway": {"persistence": {"enabled": True}}}).notes
    db_only = render(chart, {"gateway": {"database": {"url": {"existingSecret": "db", "key": "url"}}}}).notes
    assert "keeps its uploads and results on an emptyDir" in " ".join(db_only.split())
    rotated = render(chart, {"gateway": {"auth": {"tenants": {"existingSecret": "tenants"}}}}).notes
    assert "kubectl -n musicsplit-system rollout restart deploy/prod-musicsplit-gateway" in rotated


def test_notes_point_kube_prometheus_stack_users_at_their_grafana(chart):
    notes = render(chart, {"monitoring": {"serviceMonitors": {"enabled": True},
                                          "prometheusRule": {"enabled": True},
                                          "dashboards": {"enabled": True},
                                          "alertmanagerConfig": {"enabled": True}}}).notes
    assert 'ConfigMaps labelled grafana_dashboard=1 in musicsplit-system, Grafana folder "musicsplit"' in notes
    assert "get servicemonitors,podmonitors" in notes and "get prometheusrules" in notes
    assert "WARNING: no alerting.pagerduty.routingKey: critical alerts page nobody." in notes

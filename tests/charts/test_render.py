"""The chart lints strictly, renders with its defaults and each ci/ values file,
and every object it renders is one a Kubernetes 1.32 API server (with the
CRDs installed) accepts; bad values are refused with a message that says what
to fix."""

from __future__ import annotations

import copy

import helm_python as helm
import pytest

from . import schemas
from .conftest import CHART_DIR, VARIANTS, render


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_strict_lint_passes(variant):
    report = helm.lint(CHART_DIR, VARIANTS[variant], strict=True, kube_version="v1.32.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_validates(rendered, variant):
    objects = rendered[variant].objects
    assert objects
    assert schemas.errors(objects) == {}


def test_the_validators_refuse_what_a_cluster_would(rendered):
    """Each validator rejects a broken copy of an object the chart renders: the
    check above cannot pass for want of checking."""
    everything = rendered["everything"]
    broken = []
    deployment = copy.deepcopy(everything.one("Deployment", "prod-musicsplit-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}  # typo: unknown field
    broken.append(deployment)
    runtime = copy.deepcopy(everything.of_kind("ClusterServingRuntime")[0])
    runtime["spec"]["containers"][0]["imagePullPolicy"] = 3  # wrong type, inside the embedded Container
    broken.append(runtime)
    runtime = copy.deepcopy(runtime)
    runtime["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")  # typo
    broken.append(runtime)
    model = copy.deepcopy(everything.of_kind("SeparationModel")[0])
    model["spec"]["rollout"]["steps"] = [10, 250]  # over 100 %
    broken.append(model)
    monitor = copy.deepcopy(everything.of_kind("PodMonitor")[0])
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "keepp"
    broken.append(monitor)
    rule = copy.deepcopy(everything.of_kind("PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    broken.append(rule)
    for obj in broken:
        obj["metadata"]["name"] += "-broken"
    found = schemas.errors(broken)
    assert set(found) == {f"{o['kind']}/{o['metadata']['name']}" for o in broken}, found


def test_ci_values_files_exist_for_everything_on_and_minimal():
    assert {"everything", "minimal"} <= set(VARIANTS)


@pytest.mark.parametrize(("values", "where"), [
    ({"gateway": {"replicas": "two"}}, "/gateway/replicas"),
    ({"gateway": {"replica": 2}}, "'replica' not allowed"),
    ({"predictor": {"runtime": {"precision": "int8"}}}, "/predictor/runtime/precision"),
    ({"predictor": {"runtime": {"image": {"variant": "rocm"}}}}, "/predictor/runtime/image/variant"),
    ({"gateway": {"eventsBackend": "kafka"}}, "/gateway/eventsBackend"),
    ({"gateway": {"storage": {"url": "gs://bucket"}}}, "/gateway/storage/url"),
    ({"gateway": {"database": {"url": "postgresql://u:p@db/x"}}}, "/gateway/database/url"),
    ({"alerting": {"pagerduty": {"routingKey": "abc"}}}, "/alerting/pagerduty/routingKey"),
    # Removed with the gateway's own pager (docs/adr/0208-paging-through-alertmanager.md): an old
    # values file that still sets them is refused, not silently ignored.
    ({"gateway": {"secrets": {"pagerdutyRoutingKey": {"value": "k"}}}}, "'pagerdutyRoutingKey' not allowed"),
    ({"gateway": {"secrets": {"slackWebhookUrl": {"existingSecret": "s"}}}}, "'slackWebhookUrl' not allowed"),
    ({"gateway": {"auth": {"tenants": {"tenants": {"acme": {"api_keys": ["k"]}}}}}}, "'api_keys' not allowed"),
    ({"gateway": {"auth": {"tenants": {"tenants": {"acme": {"api_keys_sha256": ["plain-key"]}}}}}}, "api_keys_sha256"),
    ({"gateway": {"endpoints": [{"model": "htdemucs"}]}}, "url"),
    ({"operator": {"prometheusUrlAllowlist": ["prometheus:9090"]}}, "/operator/prometheusUrlAllowlist/0"),
    ({"monitoring": {"serviceMonitors": {"interval": "30 seconds"}}}, "/monitoring/serviceMonitors/interval"),
    ({"examples": {"models": ["mdx"]}}, "/examples/models/0"),
    ({"examples": {"deploymentMode": "Raw"}}, "/examples/deploymentMode"),
    ({"gateway": {"pinVersions": "yes"}}, "/gateway/pinVersions"),
    ({"quickstart": {"grafana": {"image": {"repository": "grafana/grafana", "tag": ""}}}}, "tag"),
    ({"unleash": {"image": {"tag": 7.5}}}, "/unleash/image/tag"),
])
def test_schema_refuses_bad_values_and_says_where(chart, values, where):
    with pytest.raises(helm.HelmValuesError, match="schema|at '") as refused:
        chart.validate_schema(values)
    assert where in str(refused.value)
    with pytest.raises(helm.HelmValuesError):  # an install refuses them too, before rendering anything
        render(chart, values)


@pytest.mark.parametrize(("values", "message"), [
    ({"gateway": {"replicas": 3}}, "shared job store: set gateway.database.url"),
    ({"gateway": {"autoscaling": {"enabled": True}, "database": {"url": {"value": "postgresql://u:p@db/m"}}}},
     "shared storage: set gateway.storage.url"),
    ({"gateway": {"replicas": 2, "database": {"url": {"existingSecret": "db", "key": "url"}},
                  "storage": {"url": "s3://b/p"}}}, "gateway.eventsBackend: redis"),
    ({"gateway": {"replicas": 2, "database": {"url": {"existingSecret": "db", "key": "url"}},
                  "storage": {"url": "s3://b/p"}, "eventsBackend": "redis", "persistence": {"enabled": True}},
      "redis": {"enabled": True}}, "cannot share a ReadWriteOnce data volume"),
    ({"gateway": {"cacheBackend": "redis"}}, "there is no Redis: set redis.enabled or redis.url"),
    ({"unleash": {"postgresql": {"enabled": False}}},
     "set unleash.postgresql.enabled or unleash.postgresql.externalUrl"),
    ({"quickstart": {"enabled": True}, "monitoring": {"dashboards": {"namespace": "grafana"}}},
     "leave it empty with quickstart.grafana"),
    ({"gateway": {"modelsNamespace": "ml", "shadow": {"namespace": "models"}}},
     "set only gateway.modelsNamespace"),
])
def test_settings_that_cannot_work_are_refused_with_what_to_set(chart, values, message):
    with pytest.raises(helm.HelmRenderError) as refused:
        render(chart, values)
    assert message in str(refused.value)


def test_multi_replica_gateway_renders_with_the_shared_stores(chart):
    shared = {"gateway": {"replicas": 3, "database": {"url": {"existingSecret": "db", "key": "url"}},
                          "storage": {"url": "s3://bucket/prefix"}, "eventsBackend": "redis"},
              "redis": {"url": {"existingSecret": "redis", "key": "url"}}}
    out = render(chart, shared)
    assert out.one("Deployment", "prod-musicsplit-gateway")["spec"]["replicas"] == 3
    assert schemas.errors(out.objects) == {}


def test_every_value_is_commented():
    """values.yaml is the chart's documentation: a comment above every key."""
    import re

    undocumented, previous = [], ""
    for number, line in enumerate((CHART_DIR / "values.yaml").read_text().splitlines(), start=1):
        if re.match(r"^\s*[A-Za-z0-9_.-]+:", line) and not previous.lstrip().startswith("#"):
            undocumented.append(f"{number}: {line.strip()}")
        if line.strip():
            previous = line
    assert not undocumented, undocumented


@pytest.mark.parametrize("values", [
    {"operator": {"enabled": False}, "gateway": {"enabled": False}, "predictor": {"runtime": {"enabled": False}},
     "unleash": {"enabled": False}},
    {"unleash": {"apiToken": {"existingSecret": "unleash-token", "key": "token"},
                 "postgresql": {"enabled": False, "externalUrl": {"existingSecret": "unleash-db", "key": "url"}}}},
    {"unleash": {"enabled": False, "url": "https://unleash.example/api", "apiToken": {"value": "*:production.x"}},
     "redis": {"url": {"value": "rediss://:pw@cache.example:6380/0"}}, "gateway": {"cacheBackend": "redis"}},
    {"gateway": {"auth": {"tenants": {"existingSecret": "tenants"}}, "persistence": {"enabled": True,
                 "existingClaim": "gateway-data"}, "service": {"type": "LoadBalancer"}}},
    {"quickstart": {"enabled": True, "prometheus": {"enabled": False}, "jaeger": {"enabled": False}},
     "alerting": {"slack": {"webhookUrl": {"existingSecret": "chat", "key": "url"}}}},
    {"quickstart": {"enabled": True, "grafana": {"enabled": False}, "alertmanager": {"enabled": False}},
     "tracing": {"otlpEndpoint": "http://otel-collector.monitoring:4318"}},
], ids=["nothing-but-crds", "unleash-external-db", "external-unleash-and-redis", "tenants-secret-and-claim",
        "quickstart-grafana-alertmanager", "quickstart-prometheus-jaeger"])
def test_toggles_render_objects_a_cluster_accepts(chart, values):
    out = render(chart, values)
    assert schemas.errors(out.objects) == {}

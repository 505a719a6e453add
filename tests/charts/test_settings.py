"""The environment the chart gives each component is settings that component
reads (its pydantic-settings object), in values it parses; secrets travel only
through Secrets."""

from __future__ import annotations

import base64
import os

import pytest
import yaml

from musicsplit.gateway.settings import GatewaySettings
from musicsplit.operator.settings import OperatorSettings
from musicsplit.predictor.settings import PredictorSettings

from .conftest import VARIANTS, render

# Settings named in the shared contract (the task notes' common settings) that
# the predictor, gateway and operator branches are adding now. Once a
# component has one, this test fails until it is taken off this list, so
# from then on the value the chart renders is parsed by the real settings too.
PENDING = {
    "predictor": set(),
    "gateway": set(),
    "operator": set(),
}
COMPONENTS = {
    "predictor": ("MUSICSPLIT_", PredictorSettings),
    "gateway": ("MUSICSPLIT_GATEWAY_", GatewaySettings),
    "operator": ("MUSICSPLIT_OPERATOR_", OperatorSettings),
}


def container_env(rendered, component: str) -> list[dict]:
    if component == "predictor":
        return rendered.of_kind("ClusterServingRuntime")[0]["spec"]["containers"][0]["env"]
    deployment = rendered.one("Deployment", f"prod-musicsplit-{component}")
    return deployment["spec"]["template"]["spec"]["containers"][0]["env"]


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_pending_settings_are_still_pending(component):
    implemented = PENDING[component] & set(COMPONENTS[component][1].model_fields)
    assert not implemented, f"{component} now has {implemented}: take them off PENDING in this file"


@pytest.mark.parametrize("component", sorted(COMPONENTS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_env_is_settings_the_component_reads_and_parses(rendered, component, variant, monkeypatch):
    prefix, settings_cls = COMPONENTS[component]
    fields = set(settings_cls.model_fields)
    env = [e for e in container_env(rendered[variant], component) if e["name"].startswith("MUSICSPLIT_")]
    assert env
    plain = {}
    for var in env:
        assert var["name"].startswith(prefix), var["name"]
        field = var["name"].removeprefix(prefix).lower()
        assert field in fields | PENDING[component], f"{var['name']}: {settings_cls.__name__} has no {field}"
        if field in fields and "value" in var:
            plain[var["name"]] = var["value"]
    for name in [n for n in os.environ if n.startswith("MUSICSPLIT_")]:
        monkeypatch.delenv(name)
    for name, value in plain.items():
        monkeypatch.setenv(name, value)
    settings_cls()  # raises on a value the component cannot parse


def test_gateway_finds_the_example_predictors_and_the_bundled_unleash_and_redis(chart, monkeypatch):
    out = render(chart, {"examples": {"enabled": True, "namespace": "ml"}, "redis": {"enabled": True},
                         "gateway": {"cacheBackend": "redis"}})
    env = {e["name"]: e for e in container_env(out, "gateway")}
    monkeypatch.setenv("MUSICSPLIT_GATEWAY_ENDPOINTS", env["MUSICSPLIT_GATEWAY_ENDPOINTS"]["value"])
    endpoints = GatewaySettings().endpoints
    assert [(e.model, e.url) for e in endpoints] == [("htdemucs", "http://htdemucs-predictor.ml.svc.cluster.local")]
    assert env["MUSICSPLIT_GATEWAY_REDIS_URL"]["value"] == "redis://prod-musicsplit-redis:6379/0"
    assert out.one("Service", "prod-musicsplit-redis")["spec"]["ports"][0]["port"] == 6379
    assert env["MUSICSPLIT_GATEWAY_UNLEASH_URL"]["value"] == "http://prod-musicsplit-unleash:4242/api"
    assert out.one("Service", "prod-musicsplit-unleash")["spec"]["ports"][0]["port"] == 4242


@pytest.mark.parametrize(("mode", "url"), [
    # Knative: the predictor's Knative Service, whose Route splits between revisions.
    ("", "http://htdemucs-predictor.ml.svc.cluster.local"),
    ("Knative", "http://htdemucs-predictor.ml.svc.cluster.local"),
    # Standard: no Service splits; KServe's HTTPRoute does, at the InferenceService's status.url.
    ("RawDeployment", "https://htdemucs-ml.models.example.org"),
    ("Standard", "https://htdemucs-ml.models.example.org"),
])
def test_gateway_default_endpoint_is_where_kserve_splits_a_canary(chart, monkeypatch, mode, url):
    out = render(chart, {"examples": {"enabled": True, "namespace": "ml", "deploymentMode": mode,
                                      "kserveIngress": {"domain": "models.example.org", "scheme": "https"}}})
    assert out.one("SeparationModel", "htdemucs")["spec"].get("deploymentMode") == (mode or None)
    env = {e["name"]: e for e in container_env(out, "gateway")}
    monkeypatch.setenv("MUSICSPLIT_GATEWAY_ENDPOINTS", env["MUSICSPLIT_GATEWAY_ENDPOINTS"]["value"])
    assert [(e.model, e.url) for e in GatewaySettings().endpoints] == [("htdemucs", url)]



def test_unleash_server_accepts_the_token_the_gateway_sends(rendered):
    out = rendered["default"]
    gateway = {e["name"]: e for e in container_env(out, "gateway")}
    server = {e["name"]: e for e in out.one("Deployment", "prod-musicsplit-unleash")
              ["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = gateway["MUSICSPLIT_GATEWAY_UNLEASH_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert server["INIT_CLIENT_API_TOKENS"]["valueFrom"]["secretKeyRef"] == ref
    token = base64.b64decode(out.one("Secret", ref["name"])["data"][ref["key"]]).decode()
    # Unleash's client token format: <project>:<environment>.<secret>
    project_env, _, secret = token.partition(".")
    assert project_env == "*:development" and len(secret) == 40


def secret_values(values: dict):
    """Every `value` of a {value, existingSecret, key} setting, and the tenants' webhook secrets."""
    if isinstance(values, dict):
        if "value" in values and set(values) <= {"value", "existingSecret", "key"} and values["value"]:
            yield values["value"]
        if "webhook_secret" in values:
            yield values["webhook_secret"]
        for v in values.values():
            yield from secret_values(v)


def test_secrets_travel_only_in_secrets(rendered):
    out = rendered["everything"]
    secrets = list(secret_values(VARIANTS["everything"]))
    assert len(secrets) >= 3  # the Sentry DSN, a tenant's webhook secret, the PagerDuty routing key
    for obj in out.objects:
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{obj['kind']}/{obj['metadata']['name']} holds {leaked}"
    # ... and every secret reference points at a Secret the chart renders (with
    # that key) or one the values name as the user's own.
    rendered_secrets = {s["metadata"]["name"]: s.get("data", {}) for s in out.of_kind("Secret")}
    users = {"musicsplit-db", "musicsplit-s3", "musicsplit-alerting"}
    refs = []
    for obj in out.objects:
        for container in (obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
                          + obj.get("spec", {}).get("containers", [])):
            refs += [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e]
    assert refs
    for ref in refs:
        assert ref["name"] in users or ref["key"] in rendered_secrets.get(ref["name"], {}), ref


@pytest.mark.parametrize("setting", [{"value": "rediss://:s3cret-pw@cache.example:6380/0"},
                                     {"existingSecret": "cache-credentials", "key": "url"}])
def test_an_external_redis_url_reaches_the_gateway_only_through_a_secret(chart, setting):
    out = render(chart, {"redis": {"url": setting}, "gateway": {"cacheBackend": "redis", "eventsBackend": "redis"}})
    env = {e["name"]: e for e in container_env(out, "gateway")}
    ref = env["MUSICSPLIT_GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert "value" not in env["MUSICSPLIT_GATEWAY_REDIS_URL"]
    if "existingSecret" in setting:
        assert ref == {"name": "cache-credentials", "key": "url"}
        assert not any("s3cret" in yaml.safe_dump(o) for o in out.objects)
    else:
        stored = out.one("Secret", ref["name"])["data"][ref["key"]]
        assert base64.b64decode(stored).decode() == setting["value"]
        assert not [o for o in out.objects if o["kind"] != "Secret" and "s3cret-pw" in yaml.safe_dump(o)]


def test_tenants_file_is_the_values_mounted_where_the_gateway_reads_it(rendered):
    out = rendered["everything"]
    pod = out.one("Deployment", "prod-musicsplit-gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    path = env["MUSICSPLIT_GATEWAY_API_KEYS_FILE"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (item,) = volume["secret"]["items"]
    assert item["path"] == path.removeprefix(mount["mountPath"] + "/")
    data = out.one("Secret", volume["secret"]["secretName"])["data"][item["key"]]
    assert yaml.safe_load(base64.b64decode(data)) == {
        "tenants": VARIANTS["everything"]["gateway"]["auth"]["tenants"]["tenants"]}


def test_the_gateway_chunks_tracks_under_the_predictors_own_request_limit(rendered):
    """A track whose samples would exceed the predictors' MUSICSPLIT_MAX_REQUEST_BYTES is sent in chunks:
    the gateway must know the limit the chart gave the predictors, or every long track is a 413."""
    out = rendered["everything"]
    predictor = {e["name"]: e["value"] for e in container_env(out, "predictor") if "value" in e}
    gateway = {e["name"]: e.get("value") for e in container_env(out, "gateway")}
    assert gateway["MUSICSPLIT_GATEWAY_PREDICTOR_MAX_REQUEST_BYTES"] == predictor["MUSICSPLIT_MAX_REQUEST_BYTES"]
    default_gateway = {e["name"] for e in container_env(rendered["default"], "gateway")}
    assert "MUSICSPLIT_GATEWAY_PREDICTOR_MAX_REQUEST_BYTES" not in default_gateway  # both keep their defaults

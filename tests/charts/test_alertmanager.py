"""Alert routing as the chart configures it: critical -> PagerDuty (Events v2),
warning -> Slack, Watchdog -> its dead man's switch, a critical alert
inhibiting the warning of the same alertname and namespace. Checked by the
real amtool, and by a real Alertmanager for the inhibition."""

from __future__ import annotations

import base64
import shutil
import subprocess

import httpx
import pytest
import yaml

from musicsplit.localstack import Process, free_port, wait_for, wait_until

from .conftest import render

INLINE = {"pagerduty": {"routingKey": {"value": "0123456789abcdef0123456789abcdef"},
                        "url": "http://127.0.0.1:9/pagerduty"},
          "slack": {"webhookUrl": {"value": "http://127.0.0.1:9/slack"}, "channel": "#ops"},
          "watchdog": {"url": "http://127.0.0.1:9/watchdog"}}
FROM_SECRETS = {"pagerduty": {"routingKey": {"existingSecret": "paging", "key": "routing-key"}},
                "slack": {"webhookUrl": {"existingSecret": "chat", "key": "url"}}}


def quickstart_config(chart, alerting: dict) -> tuple[dict, str]:
    out = render(chart, {"quickstart": {"enabled": True}, "alerting": alerting})
    secret = out.one("Secret", "prod-musicsplit-alertmanager")
    return out, base64.b64decode(secret["data"]["alertmanager.yml"]).decode()


@pytest.fixture(scope="module")
def amtool():
    path = shutil.which("amtool")
    assert path, "amtool: .ci/install-charts.sh (Debian prometheus-alertmanager)"
    return path


@pytest.mark.parametrize("alerting", [{}, INLINE, FROM_SECRETS], ids=["unset", "values", "existing-secrets"])
def test_config_passes_amtool(chart, amtool, alerting, tmp_path):
    _, text = quickstart_config(chart, alerting)
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    out = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_secrets_given_as_values_are_in_the_config_and_urls_are_settable(chart):
    _, text = quickstart_config(chart, INLINE)
    receivers = {r["name"]: r for r in yaml.safe_load(text)["receivers"]}
    (pd,) = receivers["pagerduty"]["pagerduty_configs"]
    assert (pd["routing_key"], pd["url"]) == ("0123456789abcdef0123456789abcdef", "http://127.0.0.1:9/pagerduty")
    (slack,) = receivers["slack"]["slack_configs"]
    assert (slack["api_url"], slack["channel"]) == ("http://127.0.0.1:9/slack", "#ops")
    assert receivers["watchdog"]["webhook_configs"][0]["url"] == "http://127.0.0.1:9/watchdog"
    # Unset: the receivers exist (routes stay valid) and send nowhere (NOTES.txt warns).
    _, text = quickstart_config(chart, {})
    assert [set(r) for r in yaml.safe_load(text)["receivers"]] == [{"name"}] * 3
    pd_default = yaml.safe_load(quickstart_config(chart, {"pagerduty": {"routingKey": {"value": "k"}}})[1])
    assert pd_default["receivers"][0]["pagerduty_configs"][0]["url"] == "https://events.pagerduty.com/v2/enqueue"


def test_secrets_from_existing_secrets_are_files_the_pod_mounts(chart):
    out, text = quickstart_config(chart, FROM_SECRETS)
    receivers = {r["name"]: r for r in yaml.safe_load(text)["receivers"]}
    files = [receivers["pagerduty"]["pagerduty_configs"][0]["routing_key_file"],
             receivers["slack"]["slack_configs"][0]["api_url_file"]]
    pod = out.one("Deployment", "prod-musicsplit-alertmanager")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path, (secret, key) in zip(files, [("paging", "routing-key"), ("chat", "url")]):
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        assert volumes[mount["name"]]["secret"]["secretName"] == secret
        assert path.removeprefix(mount["mountPath"] + "/") == key


@pytest.mark.parametrize(("labels", "receiver"), [
    ({"alertname": "MusicsplitOperatorDown", "severity": "critical", "namespace": "ml"}, "pagerduty"),
    ({"alertname": "MusicsplitCanaryRolledBack", "severity": "warning", "namespace": "ml"}, "slack"),
    ({"alertname": "Watchdog", "severity": "none"}, "watchdog"),
    ({"alertname": "SomethingElse", "severity": "info"}, "slack"),
])
def test_routes(chart, amtool, tmp_path, labels, receiver):
    _, text = quickstart_config(chart, INLINE)
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    out = subprocess.run([amtool, "config", "routes", "test", f"--config.file={path}",
                          *(f"{k}={v}" for k, v in labels.items())], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == [receiver], out.stdout + out.stderr


def test_alertmanager_config_resource_routes_the_same_way(chart):
    out = render(chart, {"monitoring": {"alertmanagerConfig": {"enabled": True}}, "alerting": INLINE})
    resource = out.of_kind("AlertmanagerConfig")[0]["spec"]
    _, text = quickstart_config(chart, INLINE)
    config = yaml.safe_load(text)
    as_strings = [[f'{m["name"]}{m["matchType"]}"{m["value"]}"' for m in r["matchers"]]
                  for r in resource["route"]["routes"]]
    assert [(r["receiver"], m) for r, m in zip(resource["route"]["routes"], as_strings)] == [
        (r["receiver"], r["matchers"]) for r in config["route"]["routes"]]
    assert resource["route"]["receiver"] == config["route"]["receiver"]
    assert resource["route"]["groupBy"] == config["route"]["group_by"]
    (inhibit,) = resource["inhibitRules"]
    assert inhibit["equal"] == config["inhibit_rules"][0]["equal"] == ["alertname", "namespace"]
    # Secrets given as values land in the chart's Secret the resource points at.
    secret = out.one("Secret", "prod-musicsplit-alerting")
    ref = next(r for r in resource["receivers"] if r["name"] == "pagerduty")["pagerdutyConfigs"][0]["routingKey"]
    assert ref["name"] == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == INLINE["pagerduty"]["routingKey"]["value"]


@pytest.fixture
def alertmanager(chart, tmp_path):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "alertmanager: .ci/install-charts.sh (Debian prometheus-alertmanager)"
    _, text = quickstart_config(chart, INLINE)
    config = tmp_path / "alertmanager.yml"
    config.write_text(text)
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=sink, stderr=subprocess.STDOUT)
    am = Process(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(am.url + "/-/ready", am, timeout=30)
        yield am
    finally:
        am.stop()


def test_critical_inhibits_the_warning_of_the_same_alert_and_namespace(alertmanager):
    def alert(name, severity, namespace):
        return {"labels": {"alertname": name, "severity": severity, "namespace": namespace}}

    sent = [alert("MusicsplitPredictorDown", "critical", "ml"),
            alert("MusicsplitPredictorDown", "warning", "ml"),      # same alert and namespace: inhibited
            alert("MusicsplitPredictorDown", "warning", "other"),   # another namespace: not
            alert("MusicsplitCanaryRolledBack", "warning", "ml")]   # another alert: not
    httpx.post(alertmanager.url + "/api/v2/alerts", json=sent, timeout=5).raise_for_status()

    def states():
        got = httpx.get(alertmanager.url + "/api/v2/alerts", timeout=5).json()
        by_key = {(a["labels"]["alertname"], a["labels"]["severity"], a["labels"]["namespace"]): a["status"]
                  for a in got}
        return by_key if len(by_key) == len(sent) and any(s["inhibitedBy"] for s in by_key.values()) else None

    status = wait_until(states, timeout=20, what="Alertmanager marks the inhibited alert")
    inhibited = {key for key, s in status.items() if s["inhibitedBy"]}
    assert inhibited == {("MusicsplitPredictorDown", "warning", "ml")}
    assert status[("MusicsplitPredictorDown", "warning", "ml")]["state"] == "suppressed"
    assert status[("MusicsplitPredictorDown", "critical", "ml")]["state"] == "active"

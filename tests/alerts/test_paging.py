"""End to end: a predictor stops, and PagerDuty gets the pages.

A real Prometheus scrapes a real predictor and a real gateway in front of it
and evaluates the rules in alerts/ (their `for:` shortened, expressions
unchanged); a real Alertmanager runs the configuration the chart renders for
its bundled Alertmanager (values point PagerDuty's Events API v2, Slack and
the Watchdog's dead man's switch at local receivers, and shorten the grouping
waits). Stopping the predictor must deliver a `trigger` for
MusicsplitPredictorDown carrying its runbook link, and, once a request finds
it gone, one for MusicsplitGatewayBreakerOpen: the gateway pages only through
Alertmanager (docs/adr/0208-paging-through-alertmanager.md).
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
import yaml

from musicsplit.localstack import start_gateway, start_predictor, wait_until
from tests.fixtures.alertmanager import Alertmanager
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.gateway.receivers import Receiver

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
CHART = ROOT / "charts" / "musicsplit"
ROUTING_KEY = "0123456789abcdef0123456789abcdef"
RUNBOOK = "https://github.com/musicsplit/musicsplit/blob/main/runbooks/{}.md"


def chart_alertmanager_config(pagerduty: str, slack: str, watchdog: str) -> str:
    """alertmanager.yml as the chart renders it for the bundled Alertmanager."""
    import helm_python as helm

    values = {"quickstart": {"enabled": True},
              "alerting": {"groupWait": "1s", "groupInterval": "1s",
                           "pagerduty": {"routingKey": {"value": ROUTING_KEY}, "url": pagerduty},
                           "slack": {"webhookUrl": {"value": slack}}, "watchdog": {"url": watchdog}}}
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name="musicsplit", namespace="musicsplit-system", is_install=True)
    docs = [d for name, text in files.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    (secret,) = [d for d in docs if d["kind"] == "Secret" and "alertmanager.yml" in d.get("data", {})]
    return base64.b64decode(secret["data"]["alertmanager.yml"]).decode()


def shortened_rules(dest: Path) -> list[Path]:
    """alerts/*.rules.yaml with every `for:` cut to 2 s; expressions as written."""
    out = []
    for src in sorted(ALERTS.glob("*.rules.yaml")):
        doc = yaml.safe_load(src.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "2s"
        path = dest / src.name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(path)
    return out


def triggers(pagerduty: Receiver, alertname: str) -> list[dict]:
    """PagerDuty events whose details name `alertname` (Alertmanager puts the
    firing alerts' labels into payload.custom_details)."""
    return [e for e in pagerduty.json_bodies("/v2/enqueue")
            if e.get("event_action") == "trigger" and f"alertname = {alertname}" in str(e["payload"])]


def test_a_stopped_predictor_pages_pagerduty(tmp_path):
    predictor = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path)
    prom = alertmanager = gateway = None
    try:
        with Receiver() as pagerduty, Receiver(status=200) as slack, Receiver(status=200) as watchdog:
            # An upgraded gateway still given its old pager's settings: it must say they are
            # ignored, and send nothing to PagerDuty itself (every event there is Alertmanager's).
            gateway = start_gateway([("dsp-baseline", predictor.url)], data_dir=tmp_path / "gateway", log_dir=tmp_path,
                                    default_model="dsp-baseline",
                                    env={"MUSICSPLIT_GATEWAY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
                                         "MUSICSPLIT_GATEWAY_PAGERDUTY_URL": f"{pagerduty.url}/v2/enqueue",
                                         "MUSICSPLIT_GATEWAY_BREAKER_RESET_S": "600"})
            gateway_target = gateway.extra["metrics_url"].removeprefix("http://").removesuffix("/metrics")
            alertmanager = Alertmanager(tmp_path, chart_alertmanager_config(
                f"{pagerduty.url}/v2/enqueue", f"{slack.url}/services/T0/B0/X", f"{watchdog.url}/ping"))
            prom = Prometheus(tmp_path, jobs=[scrape_job("kserve-predictors", [predictor.url.removeprefix("http://")],
                                                         "predictor", namespace="ml"),
                                              scrape_job("gateway", [gateway_target], "gateway", namespace="musicsplit")],
                              rule_files=shortened_rules(tmp_path), alertmanager=alertmanager.address)
            wait_until(lambda: prom.query('up{musicsplit_component="predictor"} == 1'), 20, "the predictor scraped")
            wait_until(lambda: prom.query("musicsplit_gateway_breaker_open == 0"), 20, "the gateway's breaker scraped")

            # The pipeline delivers while the predictor is up: Watchdog reaches its
            # dead man's switch, and (no operator is scraped here) MusicsplitOperatorDown
            # pages; MusicsplitPredictorDown must not.
            wait_until(lambda: watchdog.json_bodies("/ping"), 60, "Watchdog at the dead man's switch")
            wait_until(lambda: triggers(pagerduty, "MusicsplitOperatorDown"), 60, "the operator-down page")
            assert triggers(pagerduty, "MusicsplitPredictorDown") == []
            assert triggers(pagerduty, "MusicsplitGatewayBreakerOpen") == []

            predictor.stop()
            wait_until(lambda: triggers(pagerduty, "MusicsplitPredictorDown"), 60, "the predictor-down page")
            event = triggers(pagerduty, "MusicsplitPredictorDown")[0]
            assert event["routing_key"] == ROUTING_KEY and event["event_action"] == "trigger"
            assert event["dedup_key"] and event["client"] == "Alertmanager"
            payload = event["payload"]
            assert payload["severity"] == "critical"
            assert payload["summary"] == f"ml/{predictor.url.removeprefix('http://')}: predictor target down"
            runbook = RUNBOOK.format("MusicsplitPredictorDown")
            assert {"href": runbook, "text": "runbook"} in event["links"]
            assert runbook in str(payload["custom_details"])  # the annotations travel too

            # A request finds the predictor gone: the gateway's breaker opens, and the page
            # comes from Alertmanager (the reset is long: the breaker stays open meanwhile).
            r = httpx.post(f"{gateway.url}/v2/models/dsp-baseline/infer", content=b"{}", timeout=60)
            assert r.status_code == 503, r.text
            wait_until(lambda: triggers(pagerduty, "MusicsplitGatewayBreakerOpen"), 60, "the breaker-open page")
            event = triggers(pagerduty, "MusicsplitGatewayBreakerOpen")[0]
            assert event["payload"]["severity"] == "critical"
            assert event["payload"]["summary"] == "musicsplit: circuit breaker open for dsp-baseline in local"
            assert {"href": RUNBOOK.format("MusicsplitGatewayBreakerOpen"), "text": "runbook"} in event["links"]
            assert f"endpoint = {predictor.url}" in str(event["payload"]["custom_details"])
            events = pagerduty.json_bodies("/v2/enqueue")
            assert [e.get("client") for e in events] == ["Alertmanager"] * len(events), "only Alertmanager pages"
            assert "MUSICSPLIT_GATEWAY_PAGERDUTY_ROUTING_KEY, MUSICSPLIT_GATEWAY_PAGERDUTY_URL no longer read" in \
                gateway.log_path.read_text()
            # Critical goes to PagerDuty only: Slack got neither page.
            assert all("MusicsplitPredictorDown" not in str(body) and "MusicsplitGatewayBreakerOpen" not in str(body)
                       for body in slack.json_bodies())
    finally:
        for proc in (prom, alertmanager, gateway):
            if proc:
                proc.stop()
        predictor.stop()

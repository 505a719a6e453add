"""End to end: a predictor stops, and PagerDuty gets the page.

A real Prometheus scrapes a real predictor and evaluates the rules in
alerts/ (their `for:` shortened, expressions unchanged); a real
Alertmanager routes critical alerts to PagerDuty, whose Events API v2 URL
points at a local receiver. Stopping the predictor must deliver a
`trigger` for MusicsplitPredictorDown carrying its runbook link.

The Alertmanager configuration below stands in for the chart's template
(charts/musicsplit, branch `chart`) until that lands: same routing
(critical -> PagerDuty Events v2, warning -> Slack), same grouping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from musicsplit.localstack import start_predictor
from tests.fixtures.alertmanager import Alertmanager
from tests.fixtures.polling import eventually
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.gateway.receivers import Receiver

pytestmark = pytest.mark.slow

ALERTS = Path(__file__).resolve().parents[2] / "alerts"
ROUTING_KEY = "0123456789abcdef0123456789abcdef"
RUNBOOK = "https://github.com/musicsplit/musicsplit/blob/main/runbooks/MusicsplitPredictorDown.md"


def alertmanager_config(pagerduty_url: str, slack_url: str) -> dict:
    """Critical pages through PagerDuty's Events API v2, warnings go to Slack."""
    return {
        "route": {"receiver": "slack", "group_by": ["alertname", "namespace"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h",
                  "routes": [{"receiver": "pagerduty", "matchers": ['severity="critical"']}]},
        "inhibit_rules": [{"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                           "equal": ["alertname", "namespace"]}],
        "receivers": [
            {"name": "pagerduty", "pagerduty_configs": [{
                "routing_key": ROUTING_KEY, "url": pagerduty_url, "send_resolved": True,
                "severity": "{{ .CommonLabels.severity }}",
                "description": "{{ .CommonAnnotations.summary }}",
                "links": [{"href": "{{ .CommonAnnotations.runbook_url }}", "text": "runbook"}],
            }]},
            {"name": "slack", "slack_configs": [{"api_url": slack_url, "channel": "#musicsplit-alerts",
                                                 "send_resolved": True}]},
        ],
    }


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
    prom = alertmanager = None
    try:
        with Receiver() as pagerduty, Receiver(status=200) as slack:
            alertmanager = Alertmanager(tmp_path, alertmanager_config(f"{pagerduty.url}/v2/enqueue",
                                                                      f"{slack.url}/services/T0/B0/X"))
            prom = Prometheus(tmp_path, jobs=[scrape_job("kserve-predictors", [predictor.url.removeprefix("http://")],
                                                         "predictor", namespace="ml")],
                              rule_files=shortened_rules(tmp_path), alertmanager=alertmanager.address)
            eventually(lambda: prom.query('up{musicsplit_component="predictor"} == 1'), 20, "the predictor scraped")

            # The pipeline delivers while the predictor is up: no operator is scraped
            # here, so MusicsplitOperatorDown pages, and PredictorDown must not.
            eventually(lambda: triggers(pagerduty, "MusicsplitOperatorDown"), 60, "the operator-down page")
            assert triggers(pagerduty, "MusicsplitPredictorDown") == []

            predictor.stop()
            eventually(lambda: triggers(pagerduty, "MusicsplitPredictorDown"), 60, "the predictor-down page")
            event = triggers(pagerduty, "MusicsplitPredictorDown")[0]
            assert event["routing_key"] == ROUTING_KEY and event["event_action"] == "trigger"
            assert event["dedup_key"] and event["client"] == "Alertmanager"
            payload = event["payload"]
            assert payload["severity"] == "critical"
            assert payload["summary"] == f"ml/{predictor.url.removeprefix('http://')}: predictor target down"
            assert {"href": RUNBOOK, "text": "runbook"} in event["links"]
            assert RUNBOOK in str(payload["custom_details"])  # the annotations travel too
            # Critical goes to PagerDuty only: Slack got no predictor-down message.
            assert all("MusicsplitPredictorDown" not in str(body) for body in slack.json_bodies())
    finally:
        for proc in (prom, alertmanager):
            if proc:
                proc.stop()
        predictor.stop()

"""The operator's alert rules, checked and unit-tested with promtool, and the
metrics they query, read from a running operator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "operator.rules.yaml"

pytestmark = pytest.mark.skipif(not shutil.which("promtool"), reason="needs promtool (.ci/install-operator.sh)")


def test_rules_are_valid_and_every_alert_has_a_runbook():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        runbook = ROOT / "runbooks" / f"{rule['alert']}.md"
        assert runbook.exists() and rule["annotations"]["runbook_url"].endswith(f"runbooks/{rule['alert']}.md")


def annotations(alert: str, value: str = "", **labels) -> dict:
    """The rule's annotations as Prometheus renders them for these labels."""
    rule = next(r for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"] if r["alert"] == alert)
    out = {}
    for k, v in rule["annotations"].items():
        v = " ".join(v.split()) if k == "description" else v
        for name, lv in labels.items():
            v = v.replace(f"{{{{ $labels.{name} }}}}", lv)
        out[k] = v.replace("{{ $value }}", value)
    return out


def fired(alert: str, value: str = "", **labels) -> list[dict]:
    sev = {"MusicsplitOperatorDown": "critical"}.get(alert, "warning")
    return [{"exp_labels": {"severity": sev, **labels}, "exp_annotations": annotations(alert, value, **labels)}]


def test_alerts_fire_when_they_should(tmp_path):
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {   # one rollback: fires at once, and stops after 15 minutes
                "interval": "1m",
                "input_series": [
                    {"series": 'musicsplit_rollouts_total{namespace="ml",name="htdemucs",outcome="rolledBack"}',
                     "values": "0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"},
                    {"series": 'musicsplit_rollouts_total{namespace="ml",name="htdemucs",outcome="promoted"}',
                     "values": "0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"},
                ],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "MusicsplitCanaryRolledBack",
                     "exp_alerts": fired("MusicsplitCanaryRolledBack", namespace="ml", name="htdemucs")},
                    {"eval_time": "20m", "alertname": "MusicsplitCanaryRolledBack", "exp_alerts": []},
                ],
            },
            {   # held analyses: only after 15 minutes at >= 10 holds; resets when analysis can judge again
                "interval": "1m",
                "input_series": [
                    {"series": 'musicsplit_rollout_analysis_holds{namespace="ml",name="htdemucs"}',
                     "values": "0+1x30 0x10"},
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "MusicsplitRolloutHeld", "exp_alerts": []},
                    {"eval_time": "26m", "alertname": "MusicsplitRolloutHeld",
                     "exp_alerts": fired("MusicsplitRolloutHeld", "26", namespace="ml", name="htdemucs")},
                    {"eval_time": "40m", "alertname": "MusicsplitRolloutHeld", "exp_alerts": []},
                ],
            },
            {   # operator down
                "interval": "1m",
                "input_series": [
                    {"series": 'up{job="ms/operator",musicsplit_component="operator",instance="a"}', "values": "1 1 1 0x20"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "MusicsplitOperatorDown", "exp_alerts": []},
                    {"eval_time": "15m", "alertname": "MusicsplitOperatorDown",
                     "exp_alerts": fired("MusicsplitOperatorDown")},
                ],
            },
        ],
    }
    f = tmp_path / "alerts_test.yaml"
    f.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", str(f)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

"""The alert rules in alerts/: valid, unit-tested with promtool (a case that
fires and one that must not, per alert), every alert with a severity, its
numbers and a runbook, and every expression within the metric contract."""

from __future__ import annotations

import re
import shutil
import subprocess
import yaml
import pytest

from tests.fixtures.contract import ROOT, unknown_metrics

ALERTS = ROOT / "alerts"
RUNBOOKS = ROOT / "runbooks"
RULE_FILES = sorted(ALERTS.glob("*.rules.yaml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yaml"))
RUNBOOK_URL = "https://github.com/musicsplit/musicsplit/blob/main/runbooks/{}.md"
# Always fires, on purpose (the dead man's switch alarms on its silence): it
# has no quiet case and pages nobody.
WATCHDOG = "Watchdog"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run .ci/install-observability.sh"
    return path


def rules() -> list[dict]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[dict]:
    return [r for r in rules() if "alert" in r]


def test_rule_files_are_valid():
    assert {f.name for f in RULE_FILES} >= {"predictor.rules.yaml", "gateway.rules.yaml", "operator.rules.yaml",
                                            "watchdog.rules.yaml"}
    out = subprocess.run([promtool(), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_promtool_unit_tests_pass():
    out = subprocess.run([promtool(), "test", "rules", *map(str, TEST_FILES)], capture_output=True, text=True,
                         cwd=ALERTS / "tests", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(TEST_FILES), out.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_must_not():
    fires, quiet = set(), set()
    for f in TEST_FILES:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fires == set(), "alerts never shown firing in alerts/tests"
    assert names - quiet == {WATCHDOG}, "alerts never shown quiet in alerts/tests"


def test_every_alert_has_severity_numbers_and_a_runbook():
    for a in alerts():
        name, ann = a["alert"], a["annotations"]
        assert a["labels"]["severity"] in (("none",) if name == WATCHDOG else ("critical", "warning")), name
        assert ann["summary"].strip() and ann["description"].strip(), name
        assert ann["runbook_url"] == RUNBOOK_URL.format(name), name
        book = RUNBOOKS / f"{name}.md"
        assert book.exists(), f"{name}: no {book}"
        text = book.read_text()
        assert text.startswith(f"# {name}"), book
        for section in ("## Confirm", "## Mitigate", "## Escalate"):
            assert section in text, f"{book}: no {section}"
        assert "kubectl" in text, f"{book}: no kubectl command to confirm or act"
        # The description's numbers: the value, or what the threshold was measured against.
        if name != WATCHDOG:
            assert re.search(r"\{\{ *\$value|\d", ann["description"]), f"{name}: a description without numbers"


def test_every_runbook_belongs_to_an_alert():
    names = {a["alert"] for a in alerts()}
    books = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert books - names == set(), "runbooks without an alert"


def test_rules_select_by_musicsplit_labels_and_contract_metrics():
    recorded = {r["record"] for r in rules() if "record" in r}
    for r in rules():
        expr, name = r["expr"], r.get("alert") or r.get("record")
        # Targets by musicsplit_component, never by a scrape job's name (or pod/instance).
        assert not re.search(r"\b(job|pod|instance)\s*(=|!=|=~|!~)", expr), f"{name}: selects a scrape label"
        for selector in re.findall(r"\bup\s*(\{[^}]*\})?", expr):
            assert "musicsplit_component" in selector, f"{name}: `up` without musicsplit_component"
        assert unknown_metrics(expr, recorded) == set(), f"{name}: metrics not in docs/metrics.md"


def test_every_alert_is_explained_in_the_docs():
    doc = (ROOT / "docs" / "observability.md").read_text()
    missing = {a["alert"] for a in alerts()} - set(re.findall(r"\b(Musicsplit[A-Za-z]+|Watchdog)\b", doc))
    assert missing == set(), "alerts docs/observability.md does not explain"

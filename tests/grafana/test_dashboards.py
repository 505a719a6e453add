"""The dashboards as code: the committed JSON is what grafana/ renders, it is
well-formed for Grafana, its queries keep to the metric contract and to the
template variables, and every query parses and runs on a real Prometheus."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.contract import ROOT, unknown_metrics
from tests.fixtures.prometheus import Prometheus
from tests.grafana.dashboards import BUILTINS, load, panels, queries, referenced, substitute, variables

# Metrics whose every query must leave out the probe's and shadow traffic:
# they describe what users get (latency, quality, cost of a separation).
USER_EXPERIENCE = ("musicsplit_request_duration_seconds", "audio_separation_quality", "musicsplit_mixture_snr_db",
                   "musicsplit_real_time_factor", "musicsplit_cost_per_separation_usd", "musicsplit_output_issues_total")
USER = 'source!~"probe|shadow"'


def test_committed_json_is_a_fresh_render():
    from grafana import render

    assert render.stale() == [], "run: python -m grafana.render (and commit grafana/dashboards/)"


def test_render_check_names_a_stale_file(tmp_path, capsys):
    from grafana import render

    assert render.main(["--out", str(tmp_path)]) == 0
    (tmp_path / "musicsplit-overview.json").write_text("{}")
    (tmp_path / "old.json").write_text("{}")
    assert render.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "musicsplit-overview.json" in err and "old.json" in err and "musicsplit-cost.json" not in err


def test_the_five_dashboards_exist_with_unique_uids():
    boards = load()
    assert set(boards) == {f"musicsplit-{n}.json" for n in ("overview", "quality", "canary", "cost", "users")}
    uids = [d["uid"] for d in boards.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(load()))
def test_panels_are_well_formed(name):
    d = load()[name]
    assert d["schemaVersion"] >= 41  # Grafana 11.6's dashboard schema
    ids = [p["id"] for p in d["panels"]]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and i > 0 for i in ids)
    cells: dict[tuple[int, int], str] = {}
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    for p in panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"{p['title']}: say what the panel means"
        targets = p.get("targets") or []
        assert targets, f"{p['title']}: no query"
        assert len({t["refId"] for t in targets}) == len(targets)
        for t in targets:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]


@pytest.mark.parametrize("name", sorted(load()))
def test_template_variables_are_defined_and_used(name):
    d = load()[name]
    defined = {v["name"] for v in variables(d)}
    assert {"datasource", "namespace", "model"} <= defined
    texts = [expr for _, expr in queries(d)] + [p["title"] for p in panels(d)] + [
        str(v.get("query", "")) for v in variables(d)]
    used = set().union(*(referenced(t) for t in texts))
    assert used - defined - set(BUILTINS) == set(), "variables used but not defined"
    assert defined - used - {"datasource"} == set(), "variables defined but never used"


@pytest.mark.parametrize("name", sorted(load()))
def test_queries_keep_to_the_contract(name):
    for title, expr in queries(load()[name]):
        assert unknown_metrics(expr) == set(), f"{title}: metrics not in docs/metrics.md"
        # Scrape labels only through template variables; never a job name.
        assert not re.search(r"\b(job|pod|instance)\s*(=|!=|=~|!~)", expr), title
        for m in re.finditer(r'\bnamespace\s*(=|!=|=~|!~)\s*"([^"]*)"', expr):
            assert m.group(2) == "$namespace", f"{title}: namespace without the variable"
        for metric in USER_EXPERIENCE:
            for selector in re.findall(rf"\b{metric}\w*(\{{[^}}]*\}})?", expr):
                assert USER in selector, f"{title}: {metric} counts probe and shadow traffic"


def test_every_dashboard_is_explained_in_the_docs():
    doc = (ROOT / "docs" / "observability.md").read_text()
    for d in load().values():
        assert d["title"] in doc, d["title"]


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory):
    prom = Prometheus(tmp_path_factory.mktemp("prometheus-empty"))
    yield prom
    prom.stop()


def test_every_query_parses_and_runs(empty_prometheus):
    """No data here (the live test has it); what fails is PromQL Prometheus refuses."""
    count = 0
    for name, d in load().items():
        values = {v["name"]: ".*" for v in variables(d) if v["type"] == "query"}
        for title, expr in queries(d):
            empty_prometheus.query(substitute(expr, values))
            count += 1
    assert count >= 80

"""Reading the committed dashboards as Grafana would: panels, queries, and
queries with the template variables replaced so Prometheus can run them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
# What Grafana puts in for its built-in interval variables; windows long
# enough to span a test's whole traffic.
BUILTINS = {"__rate_interval": "5m", "__interval": "15s", "__range": "10m"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def load() -> dict[str, dict]:
    """File name -> dashboard JSON, for every committed dashboard."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    """Every panel but rows (and the panels of collapsed rows)."""
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels") or [])
        else:
            out.append(p)
    return out


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def variables(dashboard: dict) -> list[dict]:
    return dashboard.get("templating", {}).get("list", [])


def referenced(text: str) -> set[str]:
    """Template variable names `$x` / `${x}` in a string."""
    return {a or b for a, b in _VARIABLE.findall(text)}


def substitute(text: str, values: dict[str, str]) -> str:
    """`text` with `$x` / `${x}` replaced by `values[x]`, Grafana's built-ins by BUILTINS."""
    table = {**BUILTINS, **values}
    return _VARIABLE.sub(lambda m: table[m.group(1) or m.group(2)], text)


def label_values(prometheus_url: str, query: str, values: dict[str, str]) -> list[str]:
    """Evaluate a `label_values(selector, label)` variable query the way Grafana's
    Prometheus data source does (the label values API with a match[] selector)."""
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
    assert m, f"not a label_values() query: {query}"
    selector, label = substitute(m.group(1), values), m.group(2)
    r = httpx.get(f"{prometheus_url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]


def resolve_variables(prometheus_url: str, dashboard: dict) -> dict[str, str]:
    """Each query variable's value as Grafana would pick it on load: its first
    option in the variable's sort order (or `.*`, the All value, when none)."""
    values: dict[str, str] = {}
    for v in variables(dashboard):
        if v["type"] != "query":
            continue
        found = label_values(prometheus_url, v["query"], values)
        if v.get("sort") == 8:  # natural descending
            found = sorted(found, key=_natural, reverse=True)
        else:
            found = sorted(found, key=_natural)
        if not found:
            values[v["name"]] = v.get("allValue") or ".*"
        elif v.get("multi") or v.get("includeAll"):
            # As Grafana writes a multi-value variable into a regex matcher: special
            # characters escaped with a backslash that is itself escaped for PromQL.
            values[v["name"]] = re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", found[0])
        else:
            values[v["name"]] = found[0]
    return values


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

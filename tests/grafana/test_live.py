"""Every dashboard query against a real Prometheus scraping a live predictor,
gateway and operator under a little traffic: no query errors anywhere, and
the core panels return data.

The stack: the DSP-baseline predictor (a real `musicsplit serve predictor`
process), a gateway process in front of it, and the operator process
reconciling a SeparationModel for that model against the kmock API (with
KServe's controller simulated, as in tests/operator/). Traffic: jobs and v2
requests through the gateway, in two rounds with a scrape in between, so
every counter has grown between two samples and rate() sees it.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from musicsplit.audio import encode
from musicsplit.golden import golden_set
from musicsplit.localstack import start_gateway, wait_until
from musicsplit.v2client import V2Client
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.grafana.dashboards import load, panels, resolve_variables, substitute

pytestmark = pytest.mark.slow

MODEL = "dsp-baseline"
# What the SeparationModel names; the simulated KServe routes it to the baseline process.
STORAGE_URI = "file:///mnt/models/dsp-baseline"
MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"

# The panels that must show data with today's metrics, and which of their
# queries (refIds; "*" = all). Panels on metrics other branches are adding
# (gateway tenants, backends, shadow traffic; operator golden SDR, failed
# analyses, analyses by result, webhooks) join this list as they land.
CORE: dict[tuple[str, str], str] = {
    ("overview", "Requests / s"): "*",
    ("overview", "Server error ratio"): "*",
    ("overview", "p99 latency"): "*",
    ("overview", "In flight"): "*",
    ("overview", "Job queue depth"): "*",
    ("overview", "Cache hit ratio"): "*",
    ("overview", "Requests by model and version"): "*",
    ("overview", "Requests by outcome"): "*",
    ("overview", "Server error ratio by model and version"): "*",
    ("overview", "Latency p50 / p95 / p99 by model and version"): "*",
    ("overview", "Requests in flight"): "*",
    ("overview", "Refusals (429 / 503)"): "A",  # B: the gateway's queue-full series, from its first 429
    ("overview", "Ready replicas per model"): "*",
    ("overview", "Caller errors by model"): "*",
    ("overview", "Jobs by outcome"): "*",
    ("overview", "Job latency p50 / p95 / p99"): "*",
    ("overview", "v2 pass-through requests by outcome"): "*",
    ("overview", "Queue depth and running jobs"): "*",
    ("overview", "Cache hit ratio by backend"): "*",
    ("overview", "Predictor endpoints up"): "A",  # B: breaker state, exported from its first change
    ("overview", "Upstream requests by outcome"): "*",
    ("overview", "Scrape targets up"): "*",
    ("quality", "Mean quality score by version"): "*",
    ("quality", "Quality score p10 / p50 / p90 by version"): "*",
    ("quality", "Quality score distribution"): "*",
    ("quality", "Share of requests scoring below 0.7 by version"): "*",
    ("quality", "Estimate components by version"): "*",
    ("quality", "Estimated SDR p50 by version"): "*",
    ("quality", "Median energy share per stem by version"): "*",
    ("quality", "SNR p10 / p50 / p90 by version"): "*",
    ("quality", "SNR distribution"): "*",
    ("quality", "Quality score by A/B arm (gateway)"): "*",
    ("quality", "Silent or non-finite outputs by version"): "*",
    ("quality", "Share of requests with an output issue"): "*",
    ("quality", "Non-finite outputs (time range)"): "*",
    ("canary", "Phase"): "*",
    ("canary", "Canary weight"): "*",
    ("canary", "Analyses held in a row"): "*",
    ("canary", "Canary weight over time"): "*",
    ("canary", "Phase over time"): "*",
    ("canary", "Promotions (time range)"): "*",
    ("canary", "Holds and hold deadlines"): "A",  # B: deadline counter, from its first deadline
    ("canary", "Rollout outcomes"): "*",
    **{("canary", f"{side}: {what}"): "*" for side in ("Stable ($stable)", "Canary ($canary)")
       for what in ("request rate", "server error ratio", "p99 latency", "mean quality score")},
    ("cost", "Monthly estimate"): "*",
    ("cost", "Monthly estimate by version"): "*",
    ("cost", "Spend per hour by traffic source"): "*",
    ("cost", "Spend per hour"): "*",
    ("cost", "Mean cost per separation"): "*",
    ("cost", "Cost per audio hour"): "*",
    ("cost", "Spend (time range)"): "*",
    ("cost", "Cost per separation by version (mean, p95)"): "*",
    ("cost", "Compute seconds per second by device"): "*",
    ("cost", "Real-time factor p50 / p95 by version"): "*",
    ("cost", "Audio separated"): "*",
    ("cost", "Model load time"): "*",
    ("users", "Assignments by arm"): "*",
    ("users", "Mean quality score by arm"): "*",
    ("users", "Job latency p95 by arm"): "*",
    ("users", "Job failure ratio by arm"): "*",
    ("users", "Re-separation rate by version"): "*",
    ("users", "Submissions by model and version"): "*",
}


def separation_model(version: str) -> dict:
    return {"apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
            "metadata": {"name": MODEL, "namespace": "default"},
            "spec": {"model": {"architecture": "htdemucs", "version": version,
                               "storageUri": STORAGE_URI},
                     "replicas": {"min": 1, "max": 1}}}


def total(prom: Prometheus, promql: str) -> float:
    result = prom.query(promql)
    return float(result[0]["value"][1]) if result else 0.0


def send_round(gateway_url: str, items, users) -> None:
    """One job per (user, item) and one v2 request, all through the gateway."""
    for user, item in zip(users, items):
        r = httpx.post(f"{gateway_url}/v1/separations", headers={"X-User-Id": user}, timeout=60,
                       files={"file": ("track.wav", encode(item.mixture, item.sample_rate), "audio/wav")})
        assert r.status_code in (200, 201, 202), r.text
        job = r.json()["id"]
        doc = wait_until(lambda: (d := httpx.get(f"{gateway_url}/v1/separations/{job}", timeout=10).json())["status"]
                         in ("succeeded", "failed", "cancelled") and d, 60, f"job {job} to finish")
        assert doc["status"] == "succeeded", doc
    with V2Client(gateway_url, timeout=60) as client:
        client.separate(MODEL, items[0].mixture, items[0].sample_rate)


@pytest.fixture(scope="module")
def stack(baseline, tmp_path_factory, logs_dir):
    from tests.operator.cluster import SM, Cluster, KServeSimulator, Operator

    tmp = tmp_path_factory.mktemp("dashboards-live")
    gateway = start_gateway([(MODEL, baseline.url)], data_dir=tmp / "gateway", log_dir=logs_dir,
                            default_model=MODEL, env={"MUSICSPLIT_GATEWAY_HEALTH_INTERVAL_S": "0.5"})
    # The gateway serves /metrics on a port of its own, apart from the API.
    gateway_target = gateway.extra["metrics_url"].removeprefix("http://").removesuffix("/metrics")
    prom = None
    try:
        with Cluster(tmp) as cluster, KServeSimulator(cluster, endpoints={STORAGE_URI: baseline.url}):
            cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
            operator = Operator(cluster, tmp / "operator.log", tick=0.5)
            try:
                prom = Prometheus(tmp, jobs=[
                    scrape_job("kserve-predictors", [baseline.url.removeprefix("http://")], "predictor",
                               namespace="default"),
                    scrape_job("gateway", [gateway_target], "gateway", namespace="musicsplit"),
                    # honor_labels: the operator's series carry the SeparationModel's namespace.
                    scrape_job("operator", [f"127.0.0.1:{operator.metrics_port}"], "operator", honor_labels=True,
                               namespace="musicsplit-system"),
                ])
                cluster.apply(separation_model("1.0.0"))
                cluster.wait(lambda: (cluster.get(SM, MODEL) or {}).get("status", {}).get("phase") == "Succeeded",
                             60, message="the SeparationModel deployed")
                wait_until(lambda: total(prom, 'count(up{musicsplit_component!=""} == 1)') == 3, 30,
                           "all three targets scraped")
                items = golden_set(n=3, seconds=2.0, seed=11)
                send_round(gateway.url, items[:2], ["alice", "bob"])
                wait_until(lambda: total(prom, "sum(musicsplit_gateway_jobs_total)") >= 2
                           and total(prom, 'sum(musicsplit_requests_total{outcome="success"})') >= 3, 30,
                           "round 1 scraped")
                send_round(gateway.url, [items[0], items[2]], ["alice", "carol"])
                wait_until(lambda: total(prom, "sum(musicsplit_gateway_jobs_total)") >= 4
                           and total(prom, 'sum(musicsplit_requests_total{outcome="success"})') >= 6, 30,
                           "round 2 scraped")
                yield prom
            finally:
                operator.stop()
    finally:
        if prom:
            prom.stop()
        gateway.stop()


@pytest.fixture(scope="module")
def live(stack):
    """Every dashboard's variables as Grafana resolves them on load, and every
    query's result: (board, panel title, refId) -> samples, or Prometheus' error."""
    boards = {name.removeprefix("musicsplit-").removesuffix(".json"): d for name, d in load().items()}
    values = {b: resolve_variables(stack.url, d) for b, d in boards.items()}
    results: dict[tuple[str, str, str], list[float] | str] = {}
    for b, d in boards.items():
        for p in panels(d):
            for t in p["targets"]:
                try:
                    samples = stack.query(substitute(t["expr"], values[b]))
                    results[(b, p["title"], t["refId"])] = [float(s["value"][1]) for s in samples]
                except AssertionError as exc:
                    results[(b, p["title"], t["refId"])] = str(exc)
    return values, results


def test_variables_resolve_to_the_live_stack(live):
    values, _ = live
    assert values["overview"]["namespace"] == "default" and values["overview"]["model"] == MODEL
    canary = values["canary"]
    assert canary["stable"] == canary["canary"] != ".*"  # one version live: both sides show it


def test_no_query_fails(live):
    _, results = live
    failed = [f"{key}: {r}" for key, r in results.items() if isinstance(r, str)]
    assert failed == [], "\n".join(failed)
    assert len(results) >= 80


def test_core_panels_return_data(live):
    _, results = live
    panels_by_key = {(b, title) for b, title, _ in results}
    assert set(CORE) <= panels_by_key, f"core panels that no dashboard has: {set(CORE) - panels_by_key}"
    empty = []
    for (b, title, ref), samples in sorted(results.items()):
        refs = CORE.get((b, title))
        if refs is None or (refs != "*" and ref not in refs):
            continue
        if isinstance(samples, str) or not any(math.isfinite(v) for v in samples):
            empty.append(f"{b} / {title} [{ref}]: {samples}")
    assert empty == [], "core panels without data:\n" + "\n".join(empty)

"""Shadow agreement, the operator's side: what it publishes for the gateway
(`status.shadow`, only while a Serverless canary step serves users both
versions), the `shadowAgreement` check, and its PromQL against a real
Prometheus scraping the gateway's histogram (scoped by `model_namespace`,
not by the gateway's own scrape namespace). The whole loop with a real
gateway and real predictors: tests/operator/test_shadow_e2e.py."""

from __future__ import annotations


import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from musicsplit.localstack import wait_until
from musicsplit.operator import analysis as a
from musicsplit.operator import prometheus, shadow
from musicsplit.operator.router import Observed
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.operator.builders import V1, V2, good, spec
from tests.operator.cluster import UNREACHABLE

CANARY = {"phase": "Progressing", "stableVersion": "1.0.0", "stableStorageUri": V1["storageUri"],
          "canaryVersion": "2.0.0", "canaryStorageUri": V2["storageUri"], "canaryWeight": 10}


def routed(pct=10, uri=V2["storageUri"], ready=True, urls=None):
    return Observed(exists=True, storage_uri=uri, canary_percent=pct, ready=True, latest_ready=ready,
                    latest_percent=pct, urls={"latest": "http://latest-m", "prev": "http://prev-m"}
                    if urls is None else urls)


def test_the_canary_url_is_published_while_both_versions_serve_users():
    assert shadow.published(spec(), CANARY, routed()) == {
        "canaryUrl": "http://latest-m", "canaryVersion": "2.0.0", "stableVersion": "1.0.0"}
    assert shadow.published(spec(), {**CANARY, "phase": "Paused"}, routed()) is not None


@pytest.mark.parametrize("why, sp, st, obs", [
    ("KServe still routes the previous weight: the tag may lead to the stable", spec(), CANARY, routed(pct=None)),
    ("the latest revision is not ready", spec(), CANARY, routed(ready=False)),
    ("the latest revision is not the canary's", spec(), CANARY, routed(uri=V1["storageUri"])),
    ("no URL for the latest revision", spec(), CANARY, routed(urls={})),
    ("at 100 % users get no stable answer", spec(), {**CANARY, "canaryWeight": 100}, routed(pct=100)),
    ("RawDeployment runs one version at a time", spec(deploymentMode="RawDeployment"), CANARY, routed()),
    ("no canary step", spec(), {**CANARY, "phase": "Succeeded", "canaryWeight": 0}, routed()),
    ("rolled back", spec(), {**CANARY, "phase": "RolledBack"}, routed()),
])
def test_nothing_is_published_when_a_mirror_would_not_reach_the_canary_or_have_nothing_to_compare(why, sp, st,
                                                                                                  obs):
    assert shadow.published(sp, st, obs) is None, why


def test_the_check_is_required_only_where_users_get_stable_answers():
    asked = spec(analysis={"minShadowAgreementDb": 10})
    assert shadow.required(asked, CANARY)
    assert not shadow.required(spec(), CANARY)  # not asked for
    assert not shadow.required(asked, {**CANARY, "canaryWeight": 100})
    assert not shadow.required(spec(deploymentMode="RawDeployment", analysis={"minShadowAgreementDb": 10}), CANARY)


def agreeing(values: dict[str, float] | None, n: float = 50, **kw) -> a.Measurements:
    from dataclasses import replace

    return replace(good(), shadow_agreement=values, shadow_comparisons=n, **kw)


ASKED = spec(analysis={"minShadowAgreementDb": 10, "minShadowComparisons": 20})


def test_shadow_agreement_passes_fails_on_the_lowest_stem_and_holds_without_enough_comparisons():
    v = a.judge(agreeing({"vocals": 30.0, "drums": 25.0}), ASKED)
    assert v.result == a.PASS and "shadowAgreement" in {c.name for c in v.checks}

    v = a.judge(agreeing({"vocals": 30.0, "drums": 4.0, "bass": 12.0}), ASKED)
    assert v.result == a.FAIL and [c.name for c in v.failed] == ["shadowAgreement"]
    check = v.failed[0]
    assert check.value == 4.0 and check.threshold == 10
    assert "under by 6 dB" in v.message and "lowest stem drums over 50 comparisons" in v.message

    v = a.judge(agreeing({"vocals": -3.0}, n=5), ASKED)
    assert v.result == a.HOLD and v.reason == "InsufficientData"  # a bad value on 5 comparisons is no evidence
    assert "5 mirrored user requests compared with stable in the window (20 needed" in v.message

    v = a.judge(agreeing(None, n=0, prometheus_error="ConnectError: refused",
                         prometheus_reason="PrometheusUnreachable"), ASKED)
    assert v.result == a.HOLD and "shadowAgreement: no data: ConnectError" in v.message


def test_no_shadow_check_where_it_does_not_apply_or_was_not_asked_for():
    assert "shadowAgreement" not in {c.name for c in a.judge(agreeing({"vocals": -5.0}), spec()).checks}
    v = a.judge(agreeing({"vocals": -5.0}), ASKED, compare_shadow=False)
    assert v.result == a.PASS and "shadowAgreement" not in {c.name for c in v.checks}


# ---------------------------------------------------------------- PromQL against a real Prometheus


class FakeGatewayMetrics:
    """A /metrics endpoint with the gateway's shadow histogram (same name and labels)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.agreement = Histogram("musicsplit_gateway_shadow_agreement_db", "",
                                   ("model", "model_namespace", "canary_version", "stable_version", "stem"),
                                   registry=self.registry, buckets=(0, 10, 20, 100))
        # prometheus_client's own exporter, on a free loopback port
        self.server, _ = start_http_server(0, "127.0.0.1", registry=self.registry)
        self.target = f"127.0.0.1:{self.server.server_port}"

    def compare(self, namespace, canary, stable, n, **per_stem):
        for _ in range(n):
            for stem, value in per_stem.items():
                self.agreement.labels("m", namespace, canary, stable, stem).observe(value)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    """Two gateway replicas scraped in the gateway's namespace (musicsplit-system),
    mirroring model `m` of two namespaces: team-a's canary disagrees, team-b's
    (same name, same versions) agrees."""
    g1, g2 = FakeGatewayMetrics(), FakeGatewayMetrics()
    p = Prometheus(tmp_path_factory.mktemp("prom"), jobs=[
        scrape_job("gateway", [g1.target, g2.target], "gateway", namespace="musicsplit-system")])
    try:
        g1.compare("team-a", "2.0", "1.0", 6, vocals=2.0, drums=8.0)
        g2.compare("team-a", "2.0", "1.0", 4, vocals=4.0, drums=8.0)
        g1.compare("team-b", "2.0", "1.0", 30, vocals=40.0, drums=35.0)
        g1.compare("team-a", "2.0", "0.9", 50, vocals=90.0, drums=90.0)  # against an older stable: not counted
        with httpx.Client(timeout=5) as client:
            wait_until(lambda: prometheus.query_scalar(
                client, p.url, "sum(musicsplit_gateway_shadow_agreement_db_count)") == 180, 30, "scraped")
        yield p
    finally:
        p.stop()
        g1.stop()
        g2.stop()


@pytest.mark.slow
def test_agreement_is_measured_per_stem_over_the_gateways_for_the_models_namespace_and_versions(prom):
    m = shadow.measure(prometheus_url=prom.url, model="m", namespace="team-a", canary_version="2.0",
                       stable_version="1.0", window_s=60)
    assert m["shadow_comparisons"] == pytest.approx(10, abs=0.01)  # both replicas, team-a only
    assert m["shadow_agreement"] == {"vocals": pytest.approx((6 * 2 + 4 * 4) / 10), "drums": pytest.approx(8.0)}
    other = shadow.measure(prometheus_url=prom.url, model="m", namespace="team-b", canary_version="2.0",
                           stable_version="1.0", window_s=60)
    assert other["shadow_comparisons"] == pytest.approx(30) and other["shadow_agreement"]["drums"] == 35.0
    nothing = shadow.measure(prometheus_url=prom.url, model="m", namespace="team-a", canary_version="3.0",
                             stable_version="1.0", window_s=60)
    assert nothing == {"shadow_agreement": None, "shadow_comparisons": 0.0}

    v = a.judge(a.Measurements(canary=good().canary, stable=good().stable, **m),
                spec(analysis={"minShadowAgreementDb": 5, "minShadowComparisons": 10, "goldenSet": {"builtin": False}}))
    assert v.result == a.FAIL and "lowest stem vocals" in v.message


def test_an_unreachable_prometheus_is_a_hold_reason_not_a_verdict():
    m = shadow.measure(prometheus_url=UNREACHABLE, model="m", namespace="a", canary_version="2.0",
                       stable_version="1.0", window_s=60, timeout_s=2)
    assert m["prometheus_reason"] == prometheus.UNREACHABLE and "ConnectError" in m["prometheus_error"]

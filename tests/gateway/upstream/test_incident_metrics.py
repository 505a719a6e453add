"""The metrics Alertmanager pages on (alerts/gateway.rules.yaml), set by a real gateway.

The gateway sends no page itself (docs/adr/0208-paging-through-alertmanager.md):
MusicsplitGatewayBreakerOpen reads `musicsplit_gateway_breaker_open`, so that
gauge must be 1 from a breaker's opening until a call succeeds again, and 0
before and after, on the gateway's own /metrics.
"""

from __future__ import annotations

import json

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
import pytest

from musicsplit.gateway.settings import Endpoint
from musicsplit.gateway.upstream.regions import EndpointPool
from musicsplit.localstack import wait_until

from tests.gateway.conftest import free_port, tone
from tests.gateway.receivers import Receiver


def breaker_open(metrics_url: str, endpoint: str) -> float | None:
    """`musicsplit_gateway_breaker_open` for `endpoint` as a scrape of the gateway sees it (None: no series)."""
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=5).text):
        for sample in family.samples:
            if sample.name == "musicsplit_gateway_breaker_open" and sample.labels.get("endpoint") == endpoint:
                return sample.value
    return None


def opens(region: str, model: str = "dsp-baseline") -> float:
    return REGISTRY.get_sample_value("musicsplit_gateway_breaker_opens_total", {"model": model, "region": region}) or 0.0


def infer(url: str) -> httpx.Response:
    mix = tone(0.3)
    body = {"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(mix.shape), "data": mix.ravel().tolist(),
                        "parameters": {"sample_rate": 44100}}]}
    return httpx.post(f"{url}/v2/models/default/infer", content=json.dumps(body), timeout=30)


@pytest.mark.slow
def test_breaker_open_is_exported_until_a_call_succeeds_again(baseline_url, gateway_factory):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"  # a stopped predictor: nothing listens there yet
    gw = gateway_factory([("dsp-baseline", endpoint, "eu-west")], breaker_failures=2, breaker_reset_s=0.5,
                         health_interval_s=60, fallback_model=None)
    state = gw.service.pool.states[0]
    assert breaker_open(gw.metrics_url, endpoint) == 0, "exported from the start: the alert sees a 0, not nothing"

    opened = opens("eu-west")
    assert infer(gw.url).status_code == 503  # its retries may outlast the reset and run a trial too
    assert opens("eu-west") > opened
    assert breaker_open(gw.metrics_url, endpoint) == 1

    # Half-open is not healthy yet: a failed trial opens it again, and the gauge never drops in between.
    wait_until(lambda: state.breaker.state == "half_open", 5, "the breaker half-open")
    assert breaker_open(gw.metrics_url, endpoint) == 1
    opened = opens("eu-west")
    assert infer(gw.url).status_code == 503
    assert opens("eu-west") > opened, "the trial ran and failed"
    assert breaker_open(gw.metrics_url, endpoint) == 1

    with Receiver(forward_to=baseline_url, port=port):  # the predictor is back on its address
        wait_until(lambda: state.breaker.state == "half_open", 5, "the breaker half-open")
        assert infer(gw.url).status_code == 200
        assert state.breaker.state == "closed"
        assert breaker_open(gw.metrics_url, endpoint) == 0, "closed again: the alert resolves"


def test_a_versions_own_url_does_not_feed_the_paging_gauge():
    # Its revision goes away after a rollout and nothing calls it again: an open breaker
    # there would hold the page forever. Its failures still count as openings.
    pool = EndpointPool([Endpoint(model="m-pinned", url=f"http://127.0.0.1:{free_port()}", region="r-pinned")],
                        ["r-pinned"], failures=1)
    revision = f"http://127.0.0.1:{free_port()}/rev"
    pool.version_url = lambda model, version: revision
    pinned = pool.pinned("m-pinned", "v2")
    opened = opens("r-pinned", "m-pinned")
    pinned.breaker.failure()
    assert pinned.breaker.state == "open" and opens("r-pinned", "m-pinned") == opened + 1
    labels = {"model": "m-pinned", "region": "r-pinned"}
    assert REGISTRY.get_sample_value("musicsplit_gateway_breaker_open", {**labels, "endpoint": revision}) is None
    assert REGISTRY.get_sample_value("musicsplit_gateway_breaker_open", {**labels, "endpoint": pool.states[0].url}) == 0

"""Sentry, Slack and PagerDuty: what the real clients send, caught by local receivers."""

from __future__ import annotations

import time

import httpx
from prometheus_client import REGISTRY
import pytest

from musicsplit.gateway.notify import init_sentry
from musicsplit.localstack import start_predictor

from .conftest import free_port, submit, tone, wait_job, wav_bytes
from .receivers import Receiver, sentry_events


def opens(region: str = "eu-west", model: str = "dsp-baseline") -> float:
    return REGISTRY.get_sample_value("musicsplit_gateway_breaker_opens_total", {"model": model, "region": region}) or 0.0


def _wait(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_breaker_open_pages_once_on_slack_and_pagerduty(gateway_factory):
    with Receiver() as hooks:
        gw = gateway_factory([("dsp-baseline", f"http://127.0.0.1:{free_port()}", "eu-west")],
                             slack_webhook_url=hooks.url + "/slack", pagerduty_routing_key="R0UTINGKEY",
                             pagerduty_url=hooks.url + "/pagerduty", breaker_failures=2, breaker_reset_s=0.5,
                             health_interval_s=60, fallback_model=None)
        opened = opens()
        for _ in range(3):  # each request fails; the breaker opens, half-opens, opens again
            r = httpx.post(f"{gw.url}/v2/models/default/infer", content=b"{}", timeout=30)
            assert r.status_code == 503
            time.sleep(0.6)
        _wait(lambda: hooks.posts("/slack") and hooks.posts("/pagerduty"))
        state = gw.service.pool.states[0]
        _wait(lambda: opens() >= opened + 2)  # the breaker opened again after its first page
        _wait(lambda: not gw.service.notifier._tasks)  # and whatever it sent has arrived
        slack, pd = hooks.json_bodies("/slack"), hooks.json_bodies("/pagerduty")
        assert len(slack) == 1 and len(pd) == 1, "de-duplicated: one incident, one message each"
        assert "circuit breaker open" in slack[0]["text"] and "eu-west" in slack[0]["text"]
        assert pd[0]["routing_key"] == "R0UTINGKEY" and pd[0]["event_action"] == "trigger"
        assert pd[0]["dedup_key"].startswith("musicsplit-gateway:breaker-open:eu-west:dsp-baseline")
        assert pd[0]["payload"]["severity"] == "error" and pd[0]["payload"]["source"] == "musicsplit-gateway"


def test_model_load_failure_is_paged(gateway_factory, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "README").write_text("no checkpoint here")
    proc = start_predictor(broken, "htdemucs", log_dir=tmp_path, wait="live", timeout=60)
    try:
        with Receiver() as hooks:
            gw = gateway_factory([("htdemucs", proc.url, "us-east")], slack_webhook_url=hooks.url + "/slack",
                            pagerduty_routing_key="K", pagerduty_url=hooks.url + "/pagerduty",
                            health_interval_s=0.3, default_model="htdemucs")
            _wait(lambda: hooks.posts("/pagerduty"), timeout=60)
            pd = hooks.json_bodies("/pagerduty")[0]
            assert pd["payload"]["severity"] == "critical" and "failed to load" in pd["payload"]["summary"]
            assert "failed to load" in hooks.json_bodies("/slack")[0]["text"]
            state = gw.service.pool.states[0]
            for _ in range(3):  # three more probes, each seeing the failed load again: still one page
                seen = state.checked_at
                _wait(lambda: state.checked_at > seen)
            _wait(lambda: not gw.service.notifier._tasks)
            assert len(hooks.posts("/pagerduty")) == 1
    finally:
        proc.stop()


@pytest.fixture
def sentry_receiver():
    with Receiver(status=200) as r:
        init_sentry(f"http://publickey@127.0.0.1:{r.url.rsplit(':', 1)[1]}/42")
        yield r
        import sentry_sdk

        sentry_sdk.flush(5)
        sentry_sdk.init()  # no DSN: off again for the rest of the run


def test_unexpected_errors_reach_sentry(gateway_factory, sentry_receiver):
    # A predictor that answers 200 with garbage: a bug somewhere, not bad input and not an outage.
    with Receiver(status=200) as garbage:
        gw = gateway_factory([("dsp-baseline", garbage.url, "eu")], health_interval_s=60)
        doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0))).json()["id"])
        assert doc["status"] == "failed" and doc["error"]["code"] == "internal_error"
        assert "reported" in doc["error"]["error"] and "reference" in doc["error"]["error"]
        reference = doc["error"]["error"].split("reference ", 1)[1].split(")")[0]
    import sentry_sdk

    sentry_sdk.flush(5)
    _wait(lambda: sentry_events(sentry_receiver))
    event = sentry_events(sentry_receiver)[0]
    assert event["exception"]["values"][-1]["type"]
    assert event["tags"]["job_model"] == "dsp-baseline" and event["tags"]["reference"] == reference
    path, headers, _ = sentry_receiver.posts("/api/")[0]
    assert path == "/api/42/envelope/" and "sentry_key=publickey" in headers.get("x-sentry-auth", "")


def test_breaker_closing_resolves_the_page(baseline_url, gateway_factory):
    with Receiver() as hooks, Receiver(status=503) as flaky:  # a predictor answering 503 ... until it recovers
        gw = gateway_factory([("dsp-baseline", flaky.url, "eu-west")], pagerduty_routing_key="K",
                             pagerduty_url=hooks.url + "/pagerduty", slack_webhook_url=hooks.url + "/slack",
                             breaker_failures=2, breaker_reset_s=0.5, health_interval_s=60, fallback_model=None)
        body = b'{"inputs": []}'
        r = httpx.post(f"{gw.url}/v2/models/default/infer", content=body, timeout=30)
        assert r.status_code == 503
        _wait(lambda: hooks.posts("/pagerduty"))
        flaky.forward_to = baseline_url  # it recovers
        time.sleep(0.6)
        mix = tone(0.3)
        import json

        ok = httpx.post(f"{gw.url}/v2/models/default/infer", timeout=30, content=json.dumps(
            {"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(mix.shape), "data": mix.ravel().tolist(),
                         "parameters": {"sample_rate": 44100}}]}))
        assert ok.status_code == 200
        _wait(lambda: len(hooks.posts("/pagerduty")) == 2)
        trigger, resolve = hooks.json_bodies("/pagerduty")
        assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
        assert resolve["dedup_key"] == trigger["dedup_key"]
        assert "closed again" in hooks.json_bodies("/slack")[-1]["text"]

"""Unexpected errors reach Sentry: what the real SDK sends, caught by a local receiver."""

from __future__ import annotations

import pytest

from musicsplit.gateway.error_reports import init_sentry
from musicsplit.localstack import wait_until

from .conftest import submit, tone, wait_job, wav_bytes
from .receivers import Receiver, sentry_events


@pytest.fixture
def sentry_receiver():
    with Receiver(status=200) as r:
        init_sentry(f"http://publickey@127.0.0.1:{r.url.rsplit(':', 1)[1]}/42")
        yield r
        import sentry_sdk

        sentry_sdk.flush(5)
        sentry_sdk.init()  # no DSN: off again for the rest of the run


@pytest.mark.slow
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
    wait_until(lambda: sentry_events(sentry_receiver), 15, "the event at Sentry")
    event = sentry_events(sentry_receiver)[0]
    assert event["exception"]["values"][-1]["type"]
    assert event["tags"]["job_model"] == "dsp-baseline" and event["tags"]["reference"] == reference
    path, headers, _ = sentry_receiver.posts("/api/")[0]
    assert path == "/api/42/envelope/" and "sentry_key=publickey" in headers.get("x-sentry-auth", "")

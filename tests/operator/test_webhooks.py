"""Webhook calls against real HTTP receivers on 127.0.0.1: what is sent, what
of the answer is kept (the status code, never the body), timeouts, URLs the
operator may not call, and the worker that runs calls off the tick."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prometheus_client import REGISTRY

from musicsplit.localstack import wait_until
from musicsplit.operator import webhooks
from musicsplit.operator.policy import HookCall, HookJob
from musicsplit.operator.spec import Webhook
from tests.fixtures.recorder import Recorder
from tests.operator.cluster import UNREACHABLE

MARKER = "receiver-secret-7f3a"
# The receivers listen on loopback: the admin names that network (it is refused by default).
LOCAL = webhooks.policy(allowed_networks=["127.0.0.0/8"])


def hook(url: str, type_: str = "confirm-promotion", timeout: str = "2s", name: str = "gate") -> Webhook:
    return Webhook(name=name, type=type_, url=url, timeout=timeout, metadata={"team": "ml"})


def answering(status: int, body: str = MARKER, headers: dict | None = None):
    return lambda req: (status, {"content-type": "text/plain", **(headers or {})}, body.encode())


def outcome_count(name: str, type_: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("musicsplit_rollout_webhooks_total", {
        "namespace": "ml", "name": name, "type": type_, "outcome": outcome}) or 0.0


def test_a_2xx_is_a_yes_and_the_payload_arrives_as_json():
    with Recorder(answering(202)) as rx:
        rec = webhooks.call(HookCall(hook(rx.url + "/gate"), "2.0.0@t/promotion", {"name": "m", "phase": "X"}), LOCAL)
    assert rec["outcome"] == "ok" and rec["code"] == 202 and rec["reason"] == "HTTP 202"
    assert rec["key"] == "2.0.0@t/promotion" and rec["type"] == "confirm-promotion"
    (req,) = rx.requests
    assert req.method == "POST" and req.path == "/gate" and req.headers["content-type"] == "application/json"
    assert json.loads(req.body) == {"name": "m", "phase": "X"}


@pytest.mark.parametrize("status", [403, 500, 302])
def test_anything_else_is_a_no_and_the_body_is_never_kept(status):
    with Recorder(answering(status, headers={"location": "http://127.0.0.1:9/elsewhere"})) as rx:
        rec = webhooks.call(HookCall(hook(rx.url), "k", {}), LOCAL)
    assert rec["outcome"] == "rejected" and rec["code"] == status and rec["reason"] == f"HTTP {status}"
    assert MARKER not in json.dumps(rec) and len(rx.requests) == 1  # a redirect is not followed


def test_a_hook_that_does_not_answer_in_time_is_a_timeout_bounded_by_its_timeout():
    gate = threading.Event()
    with Recorder(answering(200), gate=gate) as rx:
        t0 = time.monotonic()
        rec = webhooks.call(HookCall(hook(rx.url, timeout="500ms"), "k", {}), LOCAL)
        took = time.monotonic() - t0
        gate.set()
    assert rec["outcome"] == "timeout" and rec["reason"] == "no answer within 500ms" and "code" not in rec
    assert took < 5


def test_an_unreachable_hook_is_an_error_that_names_no_more_than_the_failure():
    rec = webhooks.call(HookCall(hook(UNREACHABLE + "/x"), "k", {}), LOCAL)
    assert rec["outcome"] == "error" and rec["reason"] == "no answer: ConnectError"


def test_a_url_outside_the_allowlist_is_never_requested():
    with Recorder(answering(200)) as rx:
        rec = webhooks.call(HookCall(hook(rx.url + "/gate"), "k", {}), webhooks.policy(["http://hooks.ml.svc/"]))
        assert rx.requests == []
        allowed = webhooks.policy([rx.url + "/"])  # naming it in the allowlist allows it, loopback or not
        assert webhooks.call(HookCall(hook(rx.url + "/gate"), "k", {}), allowed)["outcome"] == "ok"
    assert rec["outcome"] == "notAllowed" and "MUSICSPLIT_OPERATOR_WEBHOOK_URL_ALLOWLIST" in rec["reason"]


@pytest.mark.parametrize("url, ok", [
    ("http://loadtester.ml.svc/", True),
    ("http://loadtester.ml.svc:80/gate/approve", True),
    ("http://LoadTester.ml.svc/gate", True),
    ("https://loadtester.ml.svc/", False),  # another scheme
    ("http://loadtester.ml.svc:8080/", False),  # another port
    ("http://loadtester.ml.svc.evil.example/", False),
    ("http://loadtester.ml.svc@evil.example/", False),
    ("http://evil.example/?http://loadtester.ml.svc/", False),
    ("http://hooks.test/approvals", True),
    ("http://hooks.test/approvalsX", False),  # a path prefix is a whole segment
    ("http://hooks.test/other", False),
])
def test_allowlist_compares_parsed_scheme_host_port_and_path(url, ok):
    assert webhooks.policy(["http://loadtester.ml.svc", "http://hooks.test/approvals/"]).allowed(url) is ok


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6443/", "http://[::1]/", "http://localhost:8080/", "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1:9/x", "http://192.168.1.10/", "http://172.16.5.4/", "http://[fd00::1]/", "http://0.0.0.0/",
    "http://[::ffff:127.0.0.1]/", "http://kubernetes.default.svc/", "http://prometheus.monitoring.svc.cluster.local/",
    "http://redis/", "http://metadata.google.internal/", "file:///etc/passwd", "gopher://x/",
])
@pytest.mark.slow
def test_without_an_allowlist_loopback_link_local_private_and_cluster_internal_urls_are_refused(url):
    """A SeparationModel author must not make the operator a port scanner of its own network."""
    rule = webhooks.policy()
    assert not rule.allowed(url)
    if not url.startswith("http"):
        return  # spec.py refuses such a hook already
    with Recorder(answering(200)) as rx:  # even where something listens, nothing is requested
        rec = webhooks.call(HookCall(hook(url.replace("127.0.0.1:6443", rx.url.split("//")[1])), "k", {}), rule)
        assert rec["outcome"] == "notAllowed" and rx.requests == []


def test_public_urls_are_allowed_without_an_allowlist_unless_their_name_resolves_inside():
    rule = webhooks.policy()
    assert rule.allowed("https://hooks.slack.com/services/x") and rule.allowed("http://8.8.8.8/")
    assert rule.refusal("https://evil.example/", resolve=lambda host: ["10.1.2.3"]) == (
        "evil.example resolves to 10.1.2.3, a private address, not in the operator's webhook allowlist "
        "(MUSICSPLIT_OPERATOR_WEBHOOK_URL_ALLOWLIST) (name it there, or its network in "
        "MUSICSPLIT_OPERATOR_EGRESS_ALLOWED_NETWORKS)")
    assert rule.allowed("https://hooks.example/", resolve=lambda host: ["93.184.216.34"])
    # The admin may open a network.
    assert webhooks.policy(allowed_networks=["10.0.0.0/8"]).allowed("https://evil.example/",
                                                                   resolve=lambda host: ["10.1.2.3"])


def test_worker_calls_in_the_background_writes_status_and_counts_outcomes():
    written, gate = [], threading.Event()
    lock = threading.Lock()

    def write(ns, name, fields):
        with lock:
            written.append((ns, name, fields))

    before = outcome_count("wk", "confirm-promotion", "rejected")
    worker = webhooks.WebhookWorker(write, workers=2, rule=LOCAL)
    try:
        with Recorder(answering(403), gate=gate) as rx:
            c = HookCall(hook(rx.url), "v@t/promotion", {"phase": "WaitingPromotion"}, repeat_after_s=60)
            assert worker.submit(HookJob("ml", "wk", (c,))) == 1  # returns at once: the receiver is held
            wait_until(lambda: len(rx.requests) == 1, 5, "the call to arrive")
            assert worker.submit(HookJob("ml", "wk", (c,))) == 0  # the same hook in flight: dropped
            gate.set()
            wait_until(lambda: written, 5, "the result written")
            assert worker.submit(HookJob("ml", "wk", (c,))) == 0  # answered a moment ago
            assert len(rx.requests) == 1
        (ns, name, fields), = written
        rec = fields["webhooks"]["gate"]
        assert (ns, name) == ("ml", "wk") and rec["outcome"] == "rejected" and rec["key"] == "v@t/promotion"
        assert outcome_count("wk", "confirm-promotion", "rejected") == before + 1
    finally:
        worker.shutdown()


def test_worker_bounds_the_notifications_queued_for_one_model(monkeypatch):
    monkeypatch.setattr(webhooks, "NOTIFICATIONS_QUEUED_MAX", 4)
    gate = threading.Event()
    worker = webhooks.WebhookWorker(lambda *a: None, workers=1, rule=LOCAL)
    try:
        with Recorder(answering(200), gate=gate) as rx:
            event = HookCall(hook(rx.url, "event", name="slack"), None, {})
            assert worker.submit(HookJob("ml", "chatty", (event,) * 6)) == 4
            assert worker.submit(HookJob("ml", "quiet", (event,))) == 1  # the bound is per model
            assert outcome_count("chatty", "event", "dropped") == 2
            gate.set()
            wait_until(lambda: len(rx.requests) == 5, 10, "every queued event")
            wait_until(lambda: worker.submit(HookJob("ml", "chatty", (event,))) == 1, 10, "room again")
    finally:
        worker.shutdown()

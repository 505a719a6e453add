"""Faults: a predictor killed mid-job, a region down, timeouts, the fallback model,
a full queue. Real predictor processes; the dead ones are really dead."""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client import REGISTRY

from musicsplit.gateway.upstream.resilience import CircuitBreaker, CircuitOpen
from musicsplit.v2client import V2Client
from musicsplit.localstack import start_predictor, wait_until

from tests.gateway.conftest import free_port, submit, tone, wait_job, wav_bytes
from tests.gateway.receivers import Receiver


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_breaker_opens_half_opens_and_closes():
    clock, changes = Clock(), []
    b = CircuitBreaker("ep", failures=3, reset_s=10, clock=clock, on_change=lambda _b, o, n: changes.append(n))
    for _ in range(3):
        b.before_call()
        b.failure()
    assert b.state == "open"
    with pytest.raises(CircuitOpen) as exc:
        b.before_call()
    assert 0 < exc.value.retry_after <= 10
    clock.t = 10.0
    assert b.state == "half_open"
    b.before_call()  # the one trial
    with pytest.raises(CircuitOpen):
        b.before_call()  # no second trial while the first runs
    b.failure()
    assert b.state == "open"
    clock.t = 20.0
    b.before_call()
    b.success()
    assert b.state == "closed" and changes == ["open", "half_open", "open", "half_open", "closed"]


def upstream(region: str, outcome: str, model: str = "dsp-baseline") -> float:
    """This process's count of requests to `region`'s predictors with `outcome` (read by label).
    Each test names its regions for itself ("down-far", ...): no other gateway in the
    process moves the counts it reads."""
    return REGISTRY.get_sample_value("musicsplit_gateway_upstream_requests_total",
                                     {"model": model, "region": region, "outcome": outcome}) or 0.0


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_region_down_costs_no_request(baseline_url, gateway_factory):
    # The nearest region is down from the start; requests must all land in the far one.
    gw = gateway_factory([("dsp-baseline", dead_url(), "down-near"), ("dsp-baseline", baseline_url, "down-far")],
                         region_order=["down-near", "down-far"])
    mix = tone(1.0)
    far = upstream("down-far", "success")
    with V2Client(gw.url) as client:
        for _ in range(10):
            assert set(client.separate("default", mix, 44100).stems) == {"drums", "bass", "other", "vocals"}
    docs = [wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=i))).json()["id"]) for i in range(3)]
    assert all(d["status"] == "succeeded" for d in docs)
    assert upstream("down-far", "success") == far + 13, "10 v2 calls and 3 one-chunk jobs, each answered once"
    near = next(s for s in gw.service.pool.states if s.region == "down-near")
    wait_until(lambda: not near.healthy, 10, "the dead region marked unhealthy")


@pytest.mark.slow
def test_failover_when_a_region_dies_under_load(baseline_url, gateway_factory, tmp_path):
    near_proc = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path)
    try:
        gw = gateway_factory([("dsp-baseline", near_proc.url, "failover-near"),
                              ("dsp-baseline", baseline_url, "failover-far")],
                             region_order=["failover-near", "failover-far"])
        mix = tone(0.5)

        def call(i):
            if i == 8:
                near_proc.kill()  # the whole near region goes away mid-load
            with V2Client(gw.url, timeout=30) as client:
                r = client.separate("default", mix, 44100)
            return r.model_version

        near, far = upstream("failover-near", "success"), upstream("failover-far", "success")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, range(30)))  # bounded: 30 requests
        assert len(results) == 30 and all(results), "no failed user request"
        served_near = upstream("failover-near", "success") - near
        served_far = upstream("failover-far", "success") - far
        assert served_near + served_far == 30, "each request answered exactly once"
        # Of the 22 requests from the kill on, at most 3 had started before it: the rest went far.
        assert served_far >= 19, (served_near, served_far)
        regions = {s.region: s for s in gw.service.pool.states}
        wait_until(lambda: not regions["failover-near"].healthy, 10, "the dead region marked unhealthy")
    finally:
        near_proc.stop()


@pytest.mark.slow
def test_predictor_killed_mid_job_completes_on_the_other_replica(gateway_factory, tmp_path):
    a = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path)
    b = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path)
    try:
        gw = gateway_factory([("dsp-baseline", a.url, "eu"), ("dsp-baseline", b.url, "eu")],
                             chunk_seconds=3.0, chunk_overlap_seconds=0.5, chunk_concurrency=2)
        job = submit(gw.url, wav_bytes(tone(60.0, channels=1, seed=3), subtype="PCM_16")).json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{gw.url}/v1/separations/{job['id']}").json()["progress"]["chunks_done"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        a.kill()
        doc = wait_job(gw.url, job["id"], timeout=90)
        assert doc["status"] == "succeeded", doc
        assert doc["progress"]["chunks_done"] == doc["progress"]["chunks_total"] == 24
        failed = [s for s in gw.service.pool.states if s.url == a.url][0]
        wait_until(lambda: not failed.healthy, 10, "the killed replica marked unhealthy")
    finally:
        a.stop()
        b.stop()


def test_timeout_on_a_hung_predictor_fails_over(baseline_url, black_hole, gateway_factory):
    gw = gateway_factory([("dsp-baseline", black_hole, "near"), ("dsp-baseline", baseline_url, "far")],
                         region_order=["near", "far"], request_timeout_s=1.0, health_interval_s=60)
    start = time.perf_counter()
    with V2Client(gw.url) as client:
        assert client.separate("default", tone(0.5), 44100).stems
    assert time.perf_counter() - start < 10


@pytest.mark.slow
def test_fallback_model_when_the_chosen_model_is_down(baseline_url, gateway_factory):
    gw = gateway_factory([("htdemucs", dead_url(), "eu"), ("dsp-baseline", baseline_url, "eu")],
                         default_model="htdemucs", fallback_model="dsp-baseline")
    r = httpx.post(f"{gw.url}/v2/models/default/infer", timeout=30, content=_v2_body(tone(0.5)))
    assert r.status_code == 200, r.text
    assert r.headers["x-musicsplit-model"] == "dsp-baseline" and "htdemucs" in r.headers["x-musicsplit-fallback"]
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0))).json()["id"])
    assert doc["status"] == "succeeded"
    assert any(w.startswith("fallback") for w in doc["warnings"]), doc["warnings"]


@pytest.mark.slow
def test_no_fallback_gives_a_clean_503_with_retry_after(gateway_factory):
    gw = gateway_factory([("htdemucs", dead_url(), "eu")], default_model="htdemucs", fallback_model=None,
                         breaker_reset_s=7.0, chunk_retries=0)
    r = httpx.post(f"{gw.url}/v2/models/default/infer", timeout=30, content=_v2_body(tone(0.5)))
    assert r.status_code == 503 and r.json()["code"] == "upstream_unavailable"
    assert 1 <= int(r.headers["retry-after"]) <= 7
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0))).json()["id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "upstream_unavailable"
    assert "try again" in doc["error"]["error"]


def test_full_queue_answers_429_with_retry_after(black_hole, gateway_factory):
    gw = gateway_factory([("dsp-baseline", black_hole, "eu")], max_running_jobs=1, max_queued_jobs=1,
                         request_timeout_s=30, health_interval_s=60)
    first = submit(gw.url, wav_bytes(tone(1.0))).json()
    deadline = time.monotonic() + 10
    while httpx.get(f"{gw.url}/v1/separations/{first['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = submit(gw.url, wav_bytes(tone(1.0, seed=1)))
    assert second.status_code == 202
    third = submit(gw.url, wav_bytes(tone(1.0, seed=2)))
    assert third.status_code == 429 and third.json()["code"] == "saturated"
    assert int(third.headers["retry-after"]) >= 1
    for j in (first["id"], second.json()["id"]):
        assert httpx.delete(f"{gw.url}/v1/separations/{j}").json()["status"] == "cancelled"


def _v2_body(mix) -> bytes:
    import json

    return json.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(mix.shape),
                                   "data": mix.ravel().tolist(), "parameters": {"sample_rate": 44100}}]}).encode()


@pytest.mark.slow
def test_nearest_healthy_region_takes_the_traffic(baseline_url, gateway_factory, tmp_path):
    far = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path)
    try:
        gw = gateway_factory([("dsp-baseline", far.url, "pref-far"), ("dsp-baseline", baseline_url, "pref-near")],
                             region_order=["pref-near", "pref-far"])
        with V2Client(gw.url) as client:
            for _ in range(5):
                client.separate("default", tone(0.3), 44100)
        from prometheus_client import REGISTRY

        counts = {s.labels["region"]: s.value for m in REGISTRY.collect()
                  if m.name == "musicsplit_gateway_upstream_requests" for s in m.samples
                  if s.name.endswith("_total") and s.labels["region"].startswith("pref-")}
        assert counts.get("pref-near") == 5 and not counts.get("pref-far"), counts
    finally:
        far.stop()


@pytest.mark.slow
def test_saturated_predictor_429s_are_waited_out_not_failed(gateway_factory, tmp_path):
    busy = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path,
                           args=["--max_inflight", "1", "--max_queue", "0"])
    try:
        gw = gateway_factory([("dsp-baseline", busy.url, "sat")], chunk_seconds=2.0, chunk_overlap_seconds=0.25,
                             chunk_concurrency=8, chunk_window=8, retry_max_wait_s=1.0)
        doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(10.0, seed=81))).json()["id"], timeout=90)
        assert doc["status"] == "succeeded", doc
        from prometheus_client import REGISTRY

        saturated = sum(s.value for m in REGISTRY.collect() if m.name == "musicsplit_gateway_upstream_requests"
                        for s in m.samples if s.name.endswith("_total") and s.labels["region"] == "sat"
                        and s.labels["outcome"] == "http_429")
        assert saturated > 0, "the predictor did push back"
    finally:
        busy.stop()


@pytest.fixture
def failing_predictor():
    """A server that is ready but answers every infer with a given status (a crashing or misnamed replica),
    or with each of a list of statuses in turn."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(status: int | list[int], headers: dict[str, str] | None = None, body: dict | None = None) -> str:
        statuses = itertools.cycle(status if isinstance(status, list) else [status])

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, body: dict, extra: dict[str, str] | None = None):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer(200, {"name": "dsp-baseline", "ready": True})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = next(statuses)
                self._answer(code, body or {"error": f"injected {code}"}, headers)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("status", [500, 404])
def test_a_crashing_or_misnamed_replica_fails_over(status, failing_predictor, baseline_url, gateway_factory):
    near_region, far_region = f"crash{status}-near", f"crash{status}-far"
    gw = gateway_factory([("dsp-baseline", failing_predictor(status), near_region),
                          ("dsp-baseline", baseline_url, far_region)], region_order=[near_region, far_region])
    refused, far = upstream(near_region, f"http_{status}"), upstream(far_region, "success")
    r = httpx.post(f"{gw.url}/v2/models/default/infer", timeout=30, content=_v2_body(tone(0.5)))
    assert r.status_code == 200, r.text
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=91))).json()["id"])
    assert doc["status"] == "succeeded", doc
    assert upstream(near_region, f"http_{status}") > refused, "the near replica was tried and its error seen"
    assert upstream(far_region, "success") == far + 2, "then far answered the call and the job's one chunk"


@pytest.mark.slow
@pytest.mark.parametrize("status", [500, 404])
def test_only_a_crashing_replica_is_a_503_not_the_users_400(status, failing_predictor, gateway_factory):
    gw = gateway_factory([("dsp-baseline", failing_predictor(status), "eu")], fallback_model=None, chunk_retries=0)
    r = httpx.post(f"{gw.url}/v2/models/default/infer", timeout=30, content=_v2_body(tone(0.5)))
    assert r.status_code == 503 and r.json()["code"] == "upstream_unavailable", r.text
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=92))).json()["id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "upstream_unavailable", doc


INTERNAL = "pg error at 10.4.2.7:5432 (token=s3cr3t) /var/lib/predictor/models"


@pytest.mark.slow
@pytest.mark.parametrize("status", [500, 403])
def test_a_predictors_own_error_text_never_reaches_users(status, failing_predictor, gateway_factory):
    """A 5xx (or a 4xx that is not about the input: a proxy's 403) says things about the
    platform, not about the request: users get a stable message and code, logs get the detail."""
    url = failing_predictor(status, body={"error": INTERNAL})
    # The breaker stays closed, so the last failure is the predictor's own answer.
    gw = gateway_factory([("dsp-baseline", url, "eu")], fallback_model=None, chunk_retries=0, breaker_failures=50)
    r = httpx.post(f"{gw.url}/v2/models/default/infer", timeout=30, content=_v2_body(tone(0.5)))
    assert r.status_code in (400, 503), r.text
    assert INTERNAL not in r.text and "10.4.2.7" not in r.text and url not in r.text, r.text
    assert r.json()["code"] in ("bad_request", "upstream_unavailable") and r.json()["error"]
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=93))).json()["id"])
    assert doc["status"] == "failed", doc
    assert INTERNAL not in doc["error"]["error"] and "10.4.2.7" not in doc["error"]["error"], doc["error"]
    assert url not in doc["error"]["error"]


def test_http_date_retry_after_from_a_predictor_is_understood(failing_predictor, gateway_factory):
    from email.utils import formatdate

    url = failing_predictor(503, {"Retry-After": formatdate(time.time() + 3, usegmt=True)})
    gw = gateway_factory([("dsp-baseline", url, "eu")], fallback_model=None)
    r = httpx.post(f"{gw.url}/v2/models/default/infer", timeout=30, content=_v2_body(tone(0.5)))
    assert r.status_code == 503 and r.json()["code"] == "upstream_unavailable", r.text
    assert int(r.headers["retry-after"]) >= 1


def test_breaker_trial_is_released_when_the_call_is_cancelled_or_crashes():
    clock = Clock()
    b = CircuitBreaker("ep", failures=1, reset_s=10, clock=clock)
    b.before_call()
    b.failure()
    clock.t = 10.0
    assert b.before_call() is True  # the trial
    assert not b.available()
    b.release(True)  # cancelled: no verdict, but the trial is free again
    assert b.available() and b.state == "half_open"


@pytest.mark.parametrize("exc", [ValueError("malformed answer"), asyncio.CancelledError()])
def test_router_never_leaves_a_half_open_trial_taken(exc, tmp_path):
    from musicsplit.gateway.upstream.regions import EndpointPool
    from musicsplit.gateway.upstream.routing import Router

    from tests.gateway.conftest import make_settings

    settings = make_settings(tmp_path, [("dsp-baseline", dead_url(), "eu")], retry_attempts=1)
    pool = EndpointPool(settings.endpoints, settings.region_order, failures=1, reset_s=0.0)
    state = pool.states[0]
    state.healthy = True
    state.breaker.before_call()
    state.breaker.failure()
    assert state.breaker.state == "half_open"

    async def fn(_state):
        raise exc

    async def main():
        router = Router(settings, pool)
        try:
            with pytest.raises(type(exc)):
                await router.call("dsp-baseline", fn)
        finally:
            await router.close()

    asyncio.run(main())
    assert state.breaker.available(), state.breaker.state


@pytest.mark.slow
def test_a_busy_predictor_makes_a_job_wait_for_a_place_not_fail(baseline_url, gateway_factory):
    """Predictors answering 429 are alive and busy (other users' v2 requests): an accepted job waits for a
    place, after Retry-After, without using up its chunk retries (the load test saw a job failed so)."""
    with Receiver(forward_to=baseline_url) as proxy:
        gw = gateway_factory([("dsp-baseline", proxy.url, "eu")], fallback_model=None, chunk_retries=0,
                             retry_attempts=1, health_interval_s=60)
        proxy.busy_until = time.monotonic() + 4.0
        doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=94))).json()["id"], timeout=60)
        assert doc["status"] == "succeeded", doc
        assert len(proxy.posts("/v2/models/dsp-baseline/infer")) >= 3, "refused at least twice, then served"

        # ... but not forever: past CHUNK_SATURATED_WAIT_S the job fails, saying to try again.
        gw = gateway_factory([("dsp-baseline", proxy.url, "eu")], fallback_model=None, chunk_retries=0,
                             retry_attempts=1, health_interval_s=60, chunk_saturated_wait_s=2.0)
        proxy.busy_until = time.monotonic() + 3600
        doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=95))).json()["id"], timeout=60)
        assert doc["status"] == "failed" and doc["error"]["code"] == "upstream_unavailable", doc


@pytest.mark.slow
def test_a_jobs_wait_for_a_busy_predictor_is_bounded_whatever_fails_in_between(failing_predictor, gateway_factory):
    """429s (busy) interleaved with 503s (an outage): the saturation wait is the job's, not reset by
    the other errors, so the job fails once it has waited chunk_saturated_wait_s in all."""
    url = failing_predictor([429, 503], headers={"Retry-After": "1"})
    gw = gateway_factory([("dsp-baseline", url, "eu")], retry_attempts=1, breaker_failures=10_000,
                         chunk_retries=10_000, chunk_retry_max_wait_s=0.05, chunk_saturated_wait_s=1.0,
                         health_interval_s=60)
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=93))).json()["id"], timeout=20)
    assert doc["status"] == "failed" and "stayed busy" in doc["error"]["error"], doc

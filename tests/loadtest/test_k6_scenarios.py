"""The load test itself, run for real: the k6 binary against a local stack on 127.0.0.1.

Short runs (4-12 s) of the scenarios in loadtest/scenarios.json through
`musicsplit loadtest`, asserting on the summary JSON k6 wrote, on what the
predictor itself counted, and on the report generated from it. k6 must be
installed (the loadtest extra): a missing binary fails, it does not skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from musicsplit.localstack import start_gateway
from musicsplit.loadtest.report import write_report
from musicsplit.loadtest.run import k6_binary
from musicsplit.loadtest.stack import start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One DSP-baseline predictor and a gateway, real processes, as `--stack` starts them."""
    work = tmp_path_factory.mktemp("stack")
    s = start_stack(work)
    yield s
    s.stop()


def loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicsplit.cli", "loadtest", *args],
                          capture_output=True, text=True, timeout=timeout)


def predictor_successes(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r'^musicsplit_requests_total\{[^}]*outcome="success"[^}]*\} (\S+)$',
                                            text, re.M))


def count(summary: dict, metric: str) -> int:
    return int(summary["metrics"].get(metric, {}).get("values", {}).get("count", 0))


def thresholds(summary: dict) -> dict[str, bool]:
    return {f"{name} {expr}": v["ok"] for name, m in summary["metrics"].items()
            for expr, v in (m.get("thresholds") or {}).items()}


def smoke_jobs_on_own_gateway(stack, tmp_path, env: dict[str, str],
                              duration: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The smoke scenario, jobs only, for `duration` against a gateway of its own with `env` on the
    stack's predictor: k6's exit and its summary."""
    gateway = start_gateway([("dsp-baseline", stack.predictors[0].url)], data_dir=tmp_path / "gw",
                            log_dir=tmp_path, default_model="dsp-baseline", env=env)
    try:
        proc = loadtest("smoke", "--url", gateway.url, "--out", str(tmp_path / "run.json"), "--v2-share", "0",
                        "--track-seconds", "4", "--duration", duration)
    finally:
        gateway.stop()
    return proc, json.loads((tmp_path / "run.json").read_text())


def test_k6_binary_is_installed():
    out = subprocess.run([k6_binary(), "version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("k6 v1.")


@pytest.mark.slow
def test_smoke_scenario_separates_through_both_apis_and_reports(stack, tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    before = predictor_successes(stack.predictors[0].url)
    proc = loadtest("smoke", "--url", stack.url, "--out", str(runs / "smoke.json"), "--v2-share", "0.5",
                    "--track-seconds", "4,6")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((runs / "smoke.json").read_text())
    ok = count(summary, "separations_ok")
    assert ok >= 6
    assert count(summary, "separations_failed") == 0
    assert count(summary, "separation_seconds{api:jobs}") > 0 and count(summary, "separation_seconds{api:v2}") > 0
    assert summary["metrics"]["checks"]["values"]["fails"] == 0
    assert summary["metrics"]["checks"]["values"]["passes"] >= ok
    verdicts = thresholds(summary)
    assert set(verdicts) == {"checks rate==1", "separations_failed count==0",
                             "separation_seconds{api:jobs} p(99)<30", "separation_seconds{api:v2} p(99)<30"}
    assert all(verdicts.values())
    # Every separation k6 counted was computed by the predictor: one request per job
    # (tracks under one chunk) or per v2 call, nothing answered from a cache.
    assert predictor_successes(stack.predictors[0].url) - before == ok
    assert summary["musicsplit"]["machine"]["cores"] >= 1
    assert (runs / "smoke.csv.gz").stat().st_size > 0

    md = write_report(runs, docs).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| smoke |"))
    assert f"| {ok} |" in row and "| 0 |" in row and "4/4 pass" in row
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert images == ["loadtest/smoke-timeline.png"]
    png = (docs / images[0]).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.slow
def test_a_full_queue_is_a_refusal_not_a_failure(stack, tmp_path):
    # A gateway with no queue room answers every upload 429 + Retry-After.
    proc, summary = smoke_jobs_on_own_gateway(stack, tmp_path, {"MUSICSPLIT_GATEWAY_MAX_QUEUED_JOBS": "0"}, "4s")
    assert count(summary, "separations_refused") >= 2
    assert count(summary, "separations_ok") == 0 and count(summary, "separations_failed") == 0
    assert summary["metrics"]["checks"]["values"]["fails"] == 0
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.slow
def test_a_refused_progress_socket_is_followed_by_polling_not_failed(stack, tmp_path):
    # One progress socket per tenant: two users following jobs at once, one is refused (429 + Retry-After)
    # at the handshake; its job still runs, and the client polls it to the end.
    proc, summary = smoke_jobs_on_own_gateway(stack, tmp_path,
                                              {"MUSICSPLIT_GATEWAY_MAX_PROGRESS_SOCKETS_PER_TENANT": "1"}, "6s")
    assert count(summary, "progress_sockets_refused") >= 1
    assert count(summary, "separations_ok") >= 2 and count(summary, "separations_failed") == 0
    assert proc.returncode == 0, proc.stdout[-3000:]


class NoRetryAfter(BaseHTTPRequestHandler):
    """A gateway that is saturated but forgets Retry-After: clients cannot back off."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": "saturated", "code": "saturated"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_refusal_without_retry_after_fails_the_thresholds(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), NoRetryAfter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = loadtest("smoke", "--url", f"http://127.0.0.1:{server.server_port}", "--out",
                        str(tmp_path / "bad.json"), "--v2-share", "0.5", "--track-seconds", "2", "--duration", "3s")
    finally:
        server.shutdown()
    summary = json.loads((tmp_path / "bad.json").read_text())
    assert proc.returncode == 99  # k6: thresholds crossed
    assert count(summary, "separations_failed") > 0 and count(summary, "separations_refused") == 0
    verdicts = thresholds(summary)
    assert verdicts["separations_failed count==0"] is False and verdicts["checks rate==1"] is False
    assert summary["metrics"]["checks"]["values"]["fails"] == count(summary, "separations_failed")


@pytest.mark.slow
def test_arrival_drives_the_rate_and_judges_goodput_against_capacity(stack, tmp_path):
    proc = loadtest("arrival", "--url", stack.url, "--out", str(tmp_path / "arrival.json"), "--capacity", "0.5",
                    "--v2-share", "0.5", "--track-seconds", "4", "--duration", "8s")
    summary = json.loads((tmp_path / "arrival.json").read_text())
    meta = summary["musicsplit"]
    assert meta["rate"] == pytest.approx(1.0) and meta["capacity"] == 0.5 and meta["load_factor"] == 2.0
    assert meta["k6_scenario"]["executor"] == "constant-arrival-rate"
    assert (meta["k6_scenario"]["rate"], meta["k6_scenario"]["timeUnit"]) == (60, "1m")
    # One arrival a second for 8 s, each separated (the stack does ~2/s): goodput ~1/s, twice "capacity".
    assert 6 <= count(summary, "separations_ok") <= 10
    goal = meta["goodput_goal"]
    assert goal["ok"] and goal["goodput_over_capacity"] >= 1.5
    assert proc.returncode == 0, proc.stdout[-3000:]

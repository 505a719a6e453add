"""End to end: shadow agreement catches a degraded canary on real traffic.

Real processes: predictors (the stable and a healthy canary serve the DSP
baseline; the degraded canary is a tiny Demucs drowned in noise), the
gateway with shadow traffic on (it reads the SeparationModel's status from
the kmock API, as in a cluster), the operator, and Prometheus scraping the
predictors (in the model's namespace) and the gateway (in its own,
`musicsplit-system`, as a chart install scrapes it). Users' requests go
through the gateway to the InferenceService's URL, where a small router
splits them between the revisions as Knative does (the KServe simulator
says how).

Every other gate is opened wide (no golden set, no quality floor or drop
limit), so only the agreement can catch the degraded canary: it is rolled
back naming shadowAgreement; the healthy one passes the check and is promoted.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from musicsplit.localstack import free_port, start_gateway, start_predictor
from musicsplit.v2client import V2Client
from tests.fixtures.checkpoints import make_model_dir
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.operator.cluster import SM, Cluster, KServeSimulator, Operator
from tests.operator.test_e2e import checks, requests_by_source, uri, verdict

pytestmark = pytest.mark.slow

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAME = "sep"
HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


class KnativeRoute:
    """The InferenceService's own URL: each request goes to one revision, drawn by
    the traffic split the KServe simulator reports (Knative's router)."""

    def __init__(self, sim: KServeSimulator, key: tuple[str, str]):
        http, rng, lock = httpx.Client(timeout=60), random.Random(0), threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                split = {u: w for u, w in (sim.split.get(key) or {}).items() if w > 0}
                if not split:
                    status, headers, content = 503, {}, b"no revision is ready"
                else:
                    with lock:
                        url = rng.choices(list(split), weights=list(split.values()))[0]
                    r = http.request(self.command, url + self.path, content=body, headers={
                        k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP})
                    status, content = r.status_code, r.content
                    headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._http = http
        threading.Thread(target=self.server.serve_forever, daemon=True, name="knative-route").start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self._http.close()


class Users:
    """Users' requests through the gateway, one after another, counted by the version that answered."""

    def __init__(self, gateway_url: str, mixture, sample_rate: int):
        self.client = V2Client(gateway_url, timeout=60, headers={"X-User-Id": "listener"})
        self.mixture, self.sr = mixture, sample_rate
        self.answered: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="users")

    def _run(self):
        while not self._stop.is_set():
            try:
                v = self.client.separate(NAME, self.mixture, self.sr).model_version
                self.answered[v] = self.answered.get(v, 0) + 1
            except Exception as e:  # noqa: BLE001 - recorded; the test asserts there are none
                self.errors.append(str(e))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)
        self.client.close()


def sm(version: str) -> dict:
    return {
        "apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "model": {"architecture": "htdemucs", "version": version, "storageUri": uri("default", version)},
            "rollout": {"steps": [50], "interval": "6s", "progressDeadline": "2m"},
            # Only the agreement can fail the canary.
            "analysis": {"window": "30s", "minRequests": 3, "maxErrorRate": 0.05, "maxP99LatencySeconds": 20,
                         "minQualityScore": 0, "maxQualityDrop": 1, "goldenSet": {"builtin": False},
                         "minShadowAgreementDb": 10, "minShadowComparisons": 3},
        },
    }


def status(cluster) -> dict:
    return (cluster.get(SM, NAME) or {}).get("status") or {}


def test_shadow_agreement_rolls_back_a_degraded_canary_and_passes_a_healthy_one(tmp_path):
    from musicsplit.golden import golden_set

    dsp = "builtin://dsp-baseline"
    wanted = {"1.0.0": dsp, "2.0.0": str(make_model_dir(tmp_path / "bad", NAME, version="2.0.0", degrade=0.5)),
              "2.1.0": dsp}
    item = golden_set(n=1, seconds=1.0, seed=7)[0]
    procs: dict = {}
    prom = None
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(len(wanted)) as pool:
            futures = {v: pool.submit(start_predictor, d, NAME, log_dir=tmp_path,
                                      env={"MUSICSPLIT_EXPECTED_VERSION": v}) for v, d in wanted.items()}
            procs = {v: f.result() for v, f in futures.items()}
        gateway_metrics_port = free_port()
        prom = Prometheus(tmp_path, jobs=[
            scrape_job("predictors", [p.url.removeprefix("http://") for p in procs.values()], "predictor",
                       namespace="default"),
            scrape_job("gateway", [f"127.0.0.1:{gateway_metrics_port}"], "gateway",
                       namespace="musicsplit-system")])
        with Cluster(tmp_path) as cluster, \
                KServeSimulator(cluster, endpoints={uri("default", v): p.url for v, p in procs.items()}) as sim:
            cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
            route = KnativeRoute(sim, ("default", NAME))
            op = Operator(cluster, tmp_path / "operator.log", tick=1.0,
                          env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url})
            gateway = None
            try:
                cluster.apply(sm("1.0.0"))
                cluster.wait(lambda: status(cluster).get("phase") == "Succeeded", 30, message="stable deployed")
                gateway = start_gateway([(NAME, route.url)], data_dir=tmp_path / "gw", log_dir=tmp_path,
                                        default_model=NAME, metrics_port=gateway_metrics_port, env={
                                            "MUSICSPLIT_GATEWAY_SHADOW_ENABLED": "true",
                                            "MUSICSPLIT_GATEWAY_SHADOW_SAMPLE_RATE": "1",
                                            "MUSICSPLIT_GATEWAY_SHADOW_MAX_CONCURRENT": "2",
                                            "MUSICSPLIT_GATEWAY_SHADOW_NAMESPACE": "default",
                                            "MUSICSPLIT_GATEWAY_SHADOW_REFRESH_S": "0.5",
                                            "KUBECONFIG": str(cluster.kubeconfig)})
                print(f"\nstartup: {time.monotonic() - t0:.1f}s")
                with Users(gateway.url, item.mixture, item.sample_rate) as users:
                    rollouts(cluster, procs, users)
                assert users.errors == [] and users.answered.get("1.0.0", 0) > 0
            finally:
                if gateway is not None:
                    gateway.stop()
                op.stop()
                route.stop()
            assert "Traceback" not in op.log(), op.log()[-5000:]
            assert "Traceback" not in gateway.log(), gateway.log()[-5000:]
    finally:
        for p in procs.values():
            p.stop()
        if prom is not None:
            prom.stop()
    print(f"total: {time.monotonic() - t0:.1f}s")


def rollouts(cluster, procs, users) -> None:
    # -- a degraded canary: its users' requests look fine to every other gate
    t1 = time.monotonic()
    cluster.apply(sm("2.0.0"))
    published = cluster.wait(lambda: status(cluster).get("shadow"), 30, message="status.shadow")
    assert published == {"canaryUrl": procs["2.0.0"].url, "canaryVersion": "2.0.0", "stableVersion": "1.0.0"}
    st = verdict(cluster, "2.0.0", timeout=60)
    c = checks(st)
    print(f"degraded: {st['phase']} after {time.monotonic() - t1:.1f}s; answered {users.answered}; "
          + str({k: (v.get("value"), v["result"]) for k, v in c.items()}))
    assert st["phase"] == "RolledBack", st
    # Failed on the agreement alone (a measured regression fails while other checks still wait for data).
    assert [k for k, v in c.items() if v["result"] == "fail"] == ["shadowAgreement"], c
    assert c["shadowAgreement"]["value"] < 10
    reason = st["history"][-1]["reason"]
    assert st["history"][-1]["outcome"] == "rolledBack" and "shadowAgreement" in reason, reason
    assert "shadow" not in st  # nothing left to mirror to
    mirrored = requests_by_source(procs["2.0.0"].url, "2.0.0")
    assert mirrored.get("shadow", 0) >= 3, mirrored

    # -- a healthy canary: it agrees with the stable, and is promoted
    t2 = time.monotonic()
    cluster.apply(sm("2.1.0"))
    st = verdict(cluster, "2.1.0", timeout=60)
    c = checks(st)
    print(f"healthy: {st['phase']} after {time.monotonic() - t2:.1f}s; answered {users.answered}; "
          + str({k: (v.get("value"), v["result"]) for k, v in c.items()}))
    assert st["phase"] == "Succeeded" and st["stableVersion"] == "2.1.0", st
    assert c["shadowAgreement"]["result"] == "pass" and c["shadowAgreement"]["value"] >= 99
    assert requests_by_source(procs["2.1.0"].url, "2.1.0").get("shadow", 0) >= 3

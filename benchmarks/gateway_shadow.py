"""Gateway: what shadow traffic costs users, side by side.

    python benchmarks/gateway_shadow.py [--seconds 10] [--requests 30]

Starts a stable and a canary predictor (the DSP baseline, the canary under
another version), kmock's Kubernetes API holding a SeparationModel whose
status.shadow names the canary, and two gateways in front of the stable one:
shadow traffic off, and on (every request mirrored, at most 2 at once).
Users' v2 requests of a fresh track go to the two gateways in turn; each is
timed from send to answer. Prints median and p95 per gateway, their ratio,
what the shadowing gateway mirrored, and what one comparison costs the
gateway's CPU (decoding both answers + per-stem SDR, in a worker thread).

Everything shares this machine's cores: the canary's separations compete
with the stable's, so the ratio is an upper bound of what shadow traffic
costs users when the canary runs on other nodes, as in a cluster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicsplit.gateway.upstream.shadow import agreements  # noqa: E402
from musicsplit.golden import golden_set  # noqa: E402
from musicsplit.localstack import start_gateway, start_predictor  # noqa: E402
from musicsplit.v2client import V2Client, decode_response, encode_request  # noqa: E402
from tests.operator.cluster import Cluster  # noqa: E402  (kmock: the Kubernetes API the gateway reads)

MODEL = "dsp-baseline"
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


def publish_canary(cluster: Cluster, url: str, canary: str, stable: str) -> None:
    cluster.apply({"apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
                   "metadata": {"name": MODEL, "namespace": "default"},
                   "spec": {"model": {"architecture": "dsp", "version": canary, "storageUri": f"gs://m/{canary}"}}})
    r = httpx.patch(f"{cluster.url}/apis/musicsplit.io/v1alpha1/namespaces/default/separationmodels/{MODEL}/status",
                    json={"status": {"shadow": {"canaryUrl": url, "canaryVersion": canary, "stableVersion": stable}}},
                    headers={"Content-Type": "application/merge-patch+json"})
    r.raise_for_status()


def shadow_counts(metrics_url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        for s in family.samples:
            if s.name == "musicsplit_gateway_shadow_requests_total":
                out[s.labels["outcome"]] = out.get(s.labels["outcome"], 0) + s.value
    return out


def comparison_cost(stable_url: str, track: np.ndarray, repeats: int = 5) -> float:
    """Median seconds to decode a stable and a canary answer and score them (what a mirror adds in the gateway)."""
    body, headers = encode_request(track, 44100)
    answer = httpx.post(f"{stable_url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=300)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        agreements(decode_response(answer.content, answer.headers).stems,
                   decode_response(answer.content, answer.headers).stems)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=30, help="per gateway")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="musicsplit-bench-"))
    tracks = [item.mixture for item in golden_set(n=args.requests, seconds=args.seconds, seed=5)]
    stable = start_predictor("builtin://dsp-baseline", MODEL, log_dir=work, threads=None)
    canary = start_predictor("builtin://dsp-baseline", MODEL, log_dir=work, threads=None,
                             env={"MUSICSPLIT_EXPECTED_VERSION": "canary"})
    gateways = {}
    try:
        with Cluster(work) as cluster:
            cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
            stable_version = V2Client(stable.url).separate(MODEL, tracks[0][:, :44100], 44100).model_version
            publish_canary(cluster, canary.url, "canary", stable_version)
            for name, env in (("off", {}), ("on", {
                    "MUSICSPLIT_GATEWAY_SHADOW_ENABLED": "true", "MUSICSPLIT_GATEWAY_SHADOW_SAMPLE_RATE": "1",
                    "MUSICSPLIT_GATEWAY_SHADOW_MAX_CONCURRENT": "2", "MUSICSPLIT_GATEWAY_SHADOW_NAMESPACE": "default",
                    "MUSICSPLIT_GATEWAY_SHADOW_REFRESH_S": "1", "KUBECONFIG": str(cluster.kubeconfig)})):
                gateways[name] = start_gateway([(MODEL, stable.url)], data_dir=work / name, log_dir=work,
                                               default_model=MODEL, env=env)
            time.sleep(2)  # the shadowing gateway's first read of the SeparationModels (refresh 1 s)
            clients = {name: V2Client(g.url, timeout=300) for name, g in gateways.items()}
            latency: dict[str, list[float]] = {name: [] for name in gateways}
            for i, track in enumerate(tracks):
                for name in (("off", "on") if i % 2 else ("on", "off")):  # neither always goes first
                    start = time.perf_counter()
                    clients[name].separate(MODEL, track, 44100)
                    latency[name].append(time.perf_counter() - start)
            time.sleep(3)  # the last mirrors finish
            counts = shadow_counts(gateways["on"].extra["metrics_url"])
            cost = comparison_cost(stable.url, tracks[0])
    finally:
        for g in gateways.values():
            g.stop()
        stable.stop()
        canary.stop()

    def p95(xs):
        return sorted(xs)[max(0, int(round(0.95 * len(xs))) - 1)]

    print(f"{args.requests} v2 requests of {args.seconds:g} s stereo per gateway, alternating\n")
    print("| gateway | median | p95 |\n|---|---|---|")
    for name in ("off", "on"):
        print(f"| shadow {name} | {1000 * statistics.median(latency[name]):.1f} ms | {1000 * p95(latency[name]):.1f} ms |")
    print(f"| on / off | {statistics.median(latency['on']) / statistics.median(latency['off']):.2f}x | "
          f"{p95(latency['on']) / p95(latency['off']):.2f}x |")
    print(f"\nmirrored by the shadowing gateway: {counts}")
    print(f"one comparison in the gateway (decode both answers + SDR per stem): {1000 * cost:.1f} ms")


if __name__ == "__main__":
    main()

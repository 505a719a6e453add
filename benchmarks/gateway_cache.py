"""Gateway: a separation job computed vs answered from the result cache, side by side.

    python benchmarks/gateway_cache.py [--seconds 30] [--repeats 5]

Starts the local stack (DSP-baseline predictor + gateway on 127.0.0.1), then
for each repeat uploads a fresh track (a cache miss: decode, validate, chunk,
separate, store) and the same track again (a hit: sha256 + lookup), each
timed from the upload to the job's succeeded status. Prints medians and the
miss / hit ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicsplit.audio import encode  # noqa: E402
from musicsplit.golden import golden_set  # noqa: E402
from musicsplit.localstack import start_gateway, start_predictor  # noqa: E402


def run_job(client: httpx.Client, data: bytes) -> tuple[float, bool]:
    start = time.perf_counter()
    job = client.post("/v1/separations", files={"file": ("track.wav", data)}, data={"output_format": "wav"})
    job.raise_for_status()
    doc = job.json()
    while doc["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.005)
        doc = client.get(f"/v1/separations/{doc['id']}").json()
    assert doc["status"] == "succeeded", doc
    return time.perf_counter() - start, doc["cached"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="musicsplit-bench-"))
    tracks = [encode(item.mixture, 44100, "wav") for item in golden_set(n=args.repeats, seconds=args.seconds, seed=11)]
    predictor = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=work, threads=None)
    try:
        gateway = start_gateway([("dsp-baseline", predictor.url)], data_dir=work / "gw", log_dir=work,
                                default_model="dsp-baseline")
        try:
            miss, hit = [], []
            with httpx.Client(base_url=gateway.url, timeout=300) as client:
                run_job(client, tracks[0])  # the gateway learns the model's version on its first answer
                for data in tracks[1:] + [tracks[0]]:
                    seconds, cached = run_job(client, data)
                    (hit if cached else miss).append(seconds)
                    seconds, cached = run_job(client, data)
                    (hit if cached else miss).append(seconds)
        finally:
            gateway.stop()
    finally:
        predictor.stop()
    med = statistics.median
    print(f"track: {args.seconds:.0f} s stereo wav ({len(tracks[0]) / 2**20:.1f} MiB), model: dsp-baseline on cpu")
    print(f"cache miss (computed): median {med(miss) * 1000:8.1f} ms over {len(miss)}")
    print(f"cache hit  (disk)    : median {med(hit) * 1000:8.1f} ms over {len(hit)}")
    print(f"miss / hit: {med(miss) / med(hit):.1f}x")


if __name__ == "__main__":
    main()

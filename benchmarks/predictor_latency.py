"""Predictor overhead and wire-format cost, measured side by side in one run.

    python benchmarks/predictor_latency.py [--model full|tiny] [--seconds 30] [--repeats 3]

Figures (medians over --repeats, same clip, same machine; the paths are
interleaved within each repeat so background load hits them alike):
  in-process   the model's own separation call (musicsplit's DemucsSeparator,
               i.e. demucs.apply.apply_model) in this process, no HTTP
  http binary  POST /v2/models/{name}/infer with the binary tensor extension
  http json    the same request as v2 JSON numbers
  demucs cli   `demucs -n NAME --repo DIR file.wav`: what a user would run
               otherwise (loads the model on every call)
Ratios: http binary / in-process (goal <= 1.03), json / binary, and the
real-time factor (compute seconds per audio second). Also, per binary request,
its latency over the server's own `compute_seconds` for that same request:
the HTTP + decode + quality + encode overhead, immune to load that changes
between one measurement and the next.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicsplit.audio import encode  # noqa: E402
from musicsplit.localstack import start_predictor  # noqa: E402
from musicsplit.predictor.loading import load  # noqa: E402
from tests.fixtures.checkpoints import make_model_dir  # noqa: E402


def binary_request(x: np.ndarray, params: dict) -> tuple[bytes, dict]:
    head = orjson.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {**params, "binary_data_output": True}})
    return head + x.tobytes(), {"inference-header-content-length": str(len(head))}


def json_request(x: np.ndarray, params: dict) -> tuple[bytes, dict]:
    doc = {"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
           "parameters": params}
    return orjson.dumps(doc), {"content-type": "application/json"}


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["full", "tiny"], default="full")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="musicsplit-bench-"))
    kind = "htdemucs-full" if args.model == "full" else "htdemucs"
    model_dir = make_model_dir(work / "model", "bench", kind=kind)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, int(args.seconds * 44100))) * 0.1).astype(np.float32)
    params = {"sample_rate": 44100, "shifts": 0}

    separator = load(str(model_dir), "cpu").separator
    separator.separate(x[:, :44100], shifts=0)  # warm-up, as the server does
    track = work / "track.wav"
    track.write_bytes(encode(x, 44100, "wav"))
    use_cli = not args.skip_cli and shutil.which("demucs")

    def run_cli():
        subprocess.run(["demucs", "-n", "bench", "--repo", str(model_dir), "--shifts", "0",
                        "-o", str(work / "cli"), str(track)], check=True, capture_output=True)

    times: dict[str, list[float]] = {"in-process": [], "http binary": [], "http json": [], "demucs cli": []}
    compute: list[float] = []
    overhead: list[float] = []
    server = start_predictor(model_dir, "bench", log_dir=work, threads=None)
    try:
        url = f"{server.url}/v2/models/bench/infer"
        with httpx.Client(timeout=900) as client:
            def post(build):
                body, headers = build(x, params)
                response = client.post(url, content=body, headers=headers)
                response.raise_for_status()
                head = response.content[:int(response.headers.get("inference-header-content-length", 0)) or None]
                compute.append(orjson.loads(head)["parameters"]["compute_seconds"])

            post(binary_request)  # the server's first request pays allocator warm-up
            for _ in range(args.repeats):
                times["in-process"] += timed(lambda: separator.separate(x, shifts=0), 1)
                times["http binary"] += timed(lambda: post(binary_request), 1)
                overhead.append(times["http binary"][-1] / compute[-1])
                times["http json"] += timed(lambda: post(json_request), 1)
                if use_cli:
                    times["demucs cli"] += timed(run_cli, 1)
    finally:
        server.stop()
    inproc, binary, as_json, cli = (times[k] for k in times)

    med = statistics.median
    print(f"model: {args.model} HTDemucs ({sum(p.numel() for p in separator.model.parameters()) / 1e6:.1f} M params), "
          f"clip: {args.seconds:.0f} s stereo 44.1 kHz, repeats: {args.repeats}, device: cpu")
    print(f"{'path':<14}{'median s':>10}{'min s':>10}")
    for name, values in times.items():
        if values:
            print(f"{name:<14}{med(values):>10.3f}{min(values):>10.3f}")
    print(f"http binary / in-process : {med(binary) / med(inproc):.3f}  (goal <= 1.03)")
    print(f"http binary / server compute, same request: {med(overhead):.3f}")
    print(f"http json / http binary  : {med(as_json) / med(binary):.3f}")
    print(f"real-time factor (binary): {med(binary) / args.seconds:.3f}  (seconds of compute per second of audio)")
    if cli:
        print(f"demucs cli / http binary : {med(cli) / med(binary):.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""A GPU STAND-IN predictor, for benchmarks only: the real predictor server whose
model waits a fixed time per audio second instead of computing.

    python benchmarks/gpu_standin.py --rtf 0.1 -- --model_name standin --http_port 8080 ...

Everything but the model is the product: KServe's ModelServer, admission,
decoding, validation, the quality checks, encoding, metrics. Only the
separator is replaced (in this process, never in the product's code): it
sleeps `rtf` seconds per audio second, the way a request waits on an
accelerator while the host's CPU is free, and returns the mixture split in
four equal stems. It stands in for a GPU on a machine that has none, so
replicas can be scaled on 2 cores without each one stealing the others' CPU.
What it measures is the platform's method (chunking, routing, admission,
per-replica concurrency), not any model's speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEMS = ["drums", "bass", "other", "vocals"]


class SleepingSeparator:
    """Takes `rtf` seconds per audio second without using the CPU; stems = mixture / 4."""

    sources, samplerate, audio_channels = STEMS, 44100, 2

    def __init__(self, rtf: float):
        self.rtf = rtf

    def separate(self, samples: np.ndarray, **_) -> np.ndarray:
        time.sleep(self.rtf * samples.shape[-1] / self.samplerate)
        quarter = np.asarray(samples, dtype=np.float32) * 0.25
        return np.broadcast_to(quarter, (len(STEMS), *quarter.shape))


def start_standin(rtf: float, log_dir: Path, *, max_inflight: int = 1, max_queue: int = 4):
    """This launcher as a process on free 127.0.0.1 ports, serving model `standin`; waits until ready."""
    from musicsplit.localstack import Process, free_port, wait_for

    http_port, grpc_port = free_port(), free_port()
    log_path = Path(log_dir) / f"standin-{http_port}.log"
    cmd = [sys.executable, __file__, "--rtf", str(rtf), "--", "--model_name", "standin",
           "--http_port", str(http_port), "--grpc_port", str(grpc_port),
           "--max_inflight", str(max_inflight), "--max_queue", str(max_queue)]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    p = Process(proc, f"http://127.0.0.1:{http_port}", log_path, grpc_port)
    wait_for(p.url + "/v2/models/standin/ready", p, 120)
    return p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtf", type=float, default=0.1, help="seconds of 'GPU' time per audio second")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then `musicsplit serve predictor` flags")
    args = parser.parse_args()
    from musicsplit import cli
    from musicsplit.predictor import loading, model

    def load(model_dir: str, *_settings, **_named) -> loading.LoadedModel:  # device, precision, ...: unused
        return loading.LoadedModel(SleepingSeparator(args.rtf), "gpu-standin", f"standin-rtf{args.rtf:g}",
                                   "gpu-standin", "cpu", loading.Manifest())

    model.load = load  # the server's model module resolved `load` at import: replace it there
    serve_args = [a for a in args.serve_args if a != "--"]
    return cli.main(["serve", "predictor", "--model_dir", "gpu-standin", "--no_warmup", *serve_args])


if __name__ == "__main__":
    sys.exit(main())

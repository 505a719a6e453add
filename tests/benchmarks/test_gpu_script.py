"""benchmarks/gpu.py runs unchanged on a CPU: the path a GPU node takes, minus CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from musicsplit.predictor.precision import PrecisionError, capability_of, resolve

ROOT = Path(__file__).resolve().parents[2]


def runnable(precision: str) -> bool:
    try:
        resolve(precision, capability_of("cpu"))
        return True
    except PrecisionError:
        return False


@pytest.mark.slow
def test_gpu_benchmark_writes_its_figures_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--model", "tiny", "--seconds", "5",
         "--repeats", "1", "--precisions", "fp32,bf16,fp16", "--batches", "1,2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    expected = {p for p in ("fp32", "bf16", "fp16") if runnable(p)}
    assert {r["precision"] for r in doc["runs"]} == expected
    assert set(doc["refused"]) == {"fp32", "bf16", "fp16"} - expected
    assert all("needs a CPU with" in reason for reason in doc["refused"].values())
    runs = {(r["precision"], r["segment_batch"]): r for r in doc["runs"]}
    assert runs[("fp32", 2)]["agreement_db"] > 70  # batched segments: the same stems to float rounding
    for (precision, _), r in runs.items():
        assert r["rtf_median"] > 0 and r["gpu_seconds_per_track"] > 0 and r["peak_memory_bytes"] is None
        if precision != "fp32":
            assert r["agreement_db"] > 40
    assert set(doc["precisions"]) == expected
    assert "| fp32 | 2 |" in proc.stdout

"""The capacity and scale-out benchmarks run end to end, tiny: real predictors, real gateways.

They print figures for docs/benchmarks.md; these tests check only that each
run completes and prints the table it promises, never the figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from musicsplit.gateway.jobs.chunking import plan_chunks

ROOT = Path(__file__).resolve().parents[2]
RATE = 44100


def bench(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def rows(out: str, header: str) -> list[list[str]]:
    """The cells of each row of the markdown table whose header starts with `header`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table


@pytest.mark.slow
def test_capacity_sweeps_every_concurrency_and_marks_one_knee():
    out = bench("benchmarks/predictor_capacity.py", "--seconds", "2", "--concurrency", "1,2", "--inflight", "1",
                "--window", "1")
    table = rows(out, "| concurrency |")
    assert [r[0].replace(" (knee)", "") for r in table] == ["1", "2"]
    assert sum("(knee)" in r[0] for r in table) == 1
    assert all(len(r) == 10 and r[-1] in ("yes", "no") for r in table)
    assert all(float(r[1]) > 0 for r in table)  # each level separated something in its windows
    assert "MAX_INFLIGHT=1: knee at concurrency" in out


@pytest.mark.slow
def test_scaleout_runs_a_chunked_job_per_replica_count_on_gpu_standins():
    out = bench("benchmarks/scaleout.py", "--seconds", "20", "--replicas", "1,2", "--repeats", "1",
                "--chunk-seconds", "8", "--rtf", "0.05", "--skip-baseline")
    chunks = len(plan_chunks(20 * RATE, 8 * RATE, 2 * RATE))
    assert f"20 s track in {chunks} chunks" in out
    for n in (1, 2):
        assert re.search(rf"gpu-standin N={n} repeat 1: [\d.]+ s", out), out  # the job succeeded
    table = rows(out, "| replicas |")
    assert [r[0] for r in table] == ["1", "2"]
    assert all(len(r) == 10 for r in table)
    # The chunking bound is arithmetic on the plan, not a measurement: chunks / ceil(chunks / N).
    assert [r[7] for r in table] == [f"{chunks / -(-chunks // n):.2f}x" for n in (1, 2)]

"""loadtest/reproduce.sh's plan: which runs a subset makes and how long they take, without running them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "loadtest" / "reproduce.sh"


def plan(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "PLAN": "1", **env}, capture_output=True,
                          text=True, timeout=30)


def runs(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"^plan: (\S+ \S+) \(", proc.stdout, re.M)


def test_the_full_plan_runs_every_scenario_of_every_configuration():
    proc = plan()
    assert proc.returncode == 0, proc.stderr
    assert runs(proc) == [f"{c} {s}" for c in ("mixed-queue-8", "jobs-queue-8") for s in ("ramp", "spike", "soak",
                                                                                          "arrival")] \
        + ["mixed-queue-64 ramp"]


def test_a_subset_runs_only_what_was_chosen_and_its_estimate_shrinks():
    full = plan()
    subset = plan(CONFIGS="jobs-queue-8 mixed-queue-64", SCENARIOS="spike arrival")
    assert subset.returncode == 0, subset.stderr
    assert runs(subset) == ["jobs-queue-8 spike", "jobs-queue-8 arrival"]  # mixed-queue-64 only ever runs ramp

    def minutes(p):
        return float(re.search(r"~([\d.]+) min of scenarios", p.stdout).group(1))

    assert 0 < minutes(subset) < minutes(full)


def test_an_unknown_name_is_refused_before_anything_runs():
    for env, word in (({"SCENARIOS": "ramp sok"}, "sok"), ({"CONFIGS": "mixed-queue-9"}, "mixed-queue-9")):
        proc = plan(**env)
        assert proc.returncode == 2 and word in proc.stderr
        assert "plan: ~" not in proc.stdout

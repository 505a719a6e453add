"""The local stack a load test may start for itself, and its memory over time.

Predictor replicas and a gateway on 127.0.0.1 (musicsplit.localstack), each
a real process reading its settings from the environment; samplers record
every process's resident memory and CPU time while the test runs, so a soak
shows whether memory creeps, and each predictor's requests in flight twice a
second, so an overload shows whether the model idled while work was refused.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from musicsplit.localstack import Process, start_gateway, start_predictor

# The predictor's gauge of requests in inference (running or waiting for the model): 0 means
# the model has nothing to do. docs/metrics.md names it.
_INFLIGHT = re.compile(r"^musicsplit_inflight_requests\{[^}]*\} (\S+)$", re.M)

# Variables recorded with a run (never the secrets: keys, tokens, DSNs, passwords).
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "DSN", "WEBHOOK")


def musicsplit_environment() -> dict[str, str]:
    """The MUSICSPLIT_* settings in this environment, secrets left out."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith("MUSICSPLIT_") and not any(w in k for w in _SECRET_WORDS)}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Stack:
    gateway: Process
    predictors: list[Process]
    samples: list[dict] = field(default_factory=list)  # {"t", "component", "rss_mib", "cpu_s"}
    inflight: list[dict] = field(default_factory=list)  # {"t", "component", "inflight"}
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def processes(self) -> dict[str, Process]:
        return {"gateway": self.gateway, **{f"predictor-{i}": p for i, p in enumerate(self.predictors)}}

    def sample(self) -> None:
        now = time.time()
        for name, proc in self.processes().items():
            rss, cpu = rss_mib(proc.proc.pid), cpu_seconds(proc.proc.pid)
            if rss is not None and cpu is not None:
                self.samples.append({"t": now, "component": name, "rss_mib": round(rss, 1), "cpu_s": cpu})

    def sample_inflight(self, client: httpx.Client) -> None:
        now = time.time()
        for i, p in enumerate(self.predictors):
            try:
                text = client.get(f"{p.url}/metrics").text
            except httpx.HTTPError:
                continue
            values = [float(v) for v in _INFLIGHT.findall(text)]
            self.inflight.append({"t": now, "component": f"predictor-{i}", "inflight": sum(values)})

    def start_sampling(self, interval: float = 5.0, inflight_interval: float = 0.5) -> None:
        if self._threads:
            return

        def resources():
            while not self._stop.wait(interval):
                self.sample()

        def activity():
            with httpx.Client(timeout=2.0) as client:
                while not self._stop.wait(inflight_interval):
                    self.sample_inflight(client)

        self.sample()
        self._threads = [threading.Thread(target=resources, name="rss-sampler", daemon=True),
                         threading.Thread(target=activity, name="inflight-sampler", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self.sample()
        self.gateway.stop()
        for p in self.predictors:
            p.stop()

    def describe(self, since: float = 0.0) -> dict:
        """What ran, and the memory samples taken from `since` (unix time) on."""
        self.sample()
        return {"gateway": self.gateway.url, "predictors": [p.url for p in self.predictors],
                "environment": musicsplit_environment(), "rss": [s for s in self.samples if s["t"] >= since],
                "inflight": [s for s in self.inflight if s["t"] >= since]}


def start_stack(work: Path, *, replicas: int = 1, model_dir: str = "builtin://dsp-baseline",
                model_name: str = "dsp-baseline", data_dir: Path | None = None,
                gateway_env: dict[str, str] | None = None) -> Stack:
    """`replicas` predictors serving `model_dir` and a gateway routing `model_name` to all of
    them; logs under `work`, the gateway's jobs and stems under `data_dir` (default work/gateway)."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    predictors: list[Process] = []
    try:
        for _ in range(replicas):
            predictors.append(start_predictor(model_dir, model_name, log_dir=logs, threads=None, timeout=300))
        gateway = start_gateway([(model_name, p.url) for p in predictors], data_dir=data_dir or work / "gateway",
                                log_dir=logs, default_model=model_name, env=gateway_env)
    except BaseException:
        for p in predictors:
            p.stop()
        raise
    return Stack(gateway, predictors)

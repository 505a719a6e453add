"""A local stack: real musicsplit processes on 127.0.0.1.

Used by `musicsplit demo` and by the tests alike. Each launcher runs the
same command a user (or a KServe pod) runs, waits until it answers, and
can stop it; logs go to a file so a server that never came up says why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import httpx

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Ask a process to stop; kill it if it has not within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Process:
    proc: subprocess.Popen
    url: str
    log_path: Path
    grpc_port: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        terminate(self.proc, sig, timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy and return that;
    TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def wait_for(url: str, proc: Process, timeout: float, expect=(200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"process exited with {proc.proc.returncode}:\n{proc.log()[-4000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code in expect:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise TimeoutError(f"{url} did not answer {expect} within {timeout} s:\n{proc.log()[-4000:]}")


def start_predictor(
    model_dir: str | Path,
    name: str = "tiny",
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    args: list[str] = (),
    wait: str = "ready",  # "ready": model loaded; "live": server up (model may still load)
    timeout: float = 120.0,
    threads: int | None = 1,  # torch CPU threads; 1 keeps parallel test servers off each other's cores
) -> Process:
    """`musicsplit serve predictor` on free 127.0.0.1 ports."""
    http_port, grpc_port = free_port(), free_port()
    log_path = Path(log_dir) / f"predictor-{name}-{http_port}.log"
    cmd = [
        sys.executable, "-m", "musicsplit.cli", "serve", "predictor",
        "--model_name", name, "--model_dir", str(model_dir),
        "--http_port", str(http_port), "--grpc_port", str(grpc_port), *args,
    ]
    limits = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    full_env = {**os.environ, **limits, **(env or {})}
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    p = Process(proc, f"http://127.0.0.1:{http_port}", log_path, grpc_port)
    path = f"/v2/models/{name}/ready" if wait == "ready" else "/v2/health/live"
    wait_for(p.url + path, p, timeout)
    return p


def start_gateway(
    endpoints: list[tuple[str, str]],
    *,
    data_dir: Path,
    log_dir: Path,
    default_model: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    port: int | None = None,  # one chosen beforehand; default: a free one
    metrics_port: int | None = None,  # likewise (e.g. already in a scrape config)
) -> Process:
    """`musicsplit serve gateway` on a 127.0.0.1 port, routing `(model, url)` endpoints;
    its /metrics at `extra["metrics_url"]` (a port of its own)."""
    port, metrics_port = port or free_port(), metrics_port or free_port()
    log_path = Path(log_dir) / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "musicsplit.cli", "serve", "gateway", "--host", "127.0.0.1",
           "--port", str(port), "--metrics_port", str(metrics_port), "--data_dir", str(data_dir),
           "--default_model", default_model]
    for model, url in endpoints:
        cmd += ["--endpoint", f"{model}={url}"]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    p = Process(proc, f"http://127.0.0.1:{port}", log_path,
                extra={"metrics_url": f"http://127.0.0.1:{metrics_port}/metrics"})
    wait_for(p.url + "/v2/health/ready", p, timeout)
    return p

"""The real Prometheus (Debian package) on 127.0.0.1 for the operator's tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import yaml

from musicsplit.localstack import terminate
from musicsplit.localstack import free_port


# What a Kubernetes scrape puts on a predictor's series (docs/metrics.md): its
# component, and the namespace it runs in (the operator's analysis selects by it).
PREDICTOR_LABELS = {"musicsplit_component": "predictor", "namespace": "default"}


class Prometheus:
    """The Debian `prometheus` binary on 127.0.0.1, scraping every second.

    `targets`: "host:port" (labelled as a predictor in namespace `default`) or
    ("host:port", {label: value}) for targets labelled otherwise."""

    def __init__(self, workdir: Path, targets: list[str | tuple[str, dict]] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        static = []
        for t in targets:
            target, labels = (t, PREDICTOR_LABELS) if isinstance(t, str) else t
            static.append({"targets": [target], "labels": dict(labels)})
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
               "scrape_configs": [{"job_name": "predictors", "scrape_interval": "1s", "scrape_timeout": "1s",
                                   "static_configs": static}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus did not start:\n" + self.log_path.read_text()[-3000:])

    def stop(self):
        terminate(self.proc, timeout=10)

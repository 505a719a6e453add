"""Shared fixtures, started once per run: model dirs, real predictor processes,
PostgreSQL, S3, and a real Kubernetes API server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.checkpoints import make_model_dir  # noqa: E402
from tests.fixtures.kube import MANIFESTS, KubeAPIServer, KubeCluster, install_crds, upstream_crds  # noqa: E402
from tests.fixtures.postgres import Postgres  # noqa: E402
from tests.fixtures.s3 import MotoS3  # noqa: E402
from musicsplit.localstack import start_predictor  # noqa: E402


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A two-model bag of tiny HTDemucs checkpoints with a musicsplit.yaml manifest."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny", "tiny", bag=2)


@pytest.fixture(scope="session")
def predictor(tiny_model_dir, logs_dir):
    """A predictor process serving the tiny Demucs model as `tiny`."""
    proc = start_predictor(tiny_model_dir, "tiny", log_dir=logs_dir, args=["--max_queue", "2"])
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def predictor_url(predictor) -> str:
    return predictor.url


@pytest.fixture(scope="session")
def baseline(logs_dir):
    """A predictor process serving the weight-free DSP baseline as `dsp-baseline`."""
    proc = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def baseline_url(baseline) -> str:
    return baseline.url


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the run; `postgres.database()` makes a fresh database and returns its URL."""
    server = Postgres.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(logs_dir):
    """An S3 API (moto's server) for the run; `s3.bucket()` makes a fresh bucket, `s3.endpoint` is its URL."""
    server = MotoS3.start(logs_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory) -> KubeCluster:
    """A real Kubernetes API server (tests/fixtures/kube.py) with the CRDs musicsplit
    ships and those it works with (KServe v0.20.0's, prometheus-operator v0.93.0's)
    installed and Established, and an admin's view of it (kubectl, REST);
    `kube.server` makes ServiceAccount tokens and restarts kube-apiserver. Shared
    by tests/kube, tests/docs and tests/images: one server per run."""
    server = KubeAPIServer.start(tmp_path_factory.mktemp("kube-apiserver"))
    try:
        admin = server.kubeconfig(server.root / "admin.kubeconfig")
        install_crds(server, [MANIFESTS / "crd.yaml", MANIFESTS / "peering-crd.yaml", *upstream_crds()])
        yield KubeCluster(server, admin)
    finally:
        server.stop()

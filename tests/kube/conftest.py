"""One real Kubernetes API server for tests/kube, started once per run, with
the CRDs musicsplit ships and those it works with (KServe v0.20.0's,
prometheus-operator v0.93.0's) installed and Established."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.kube import UPSTREAM_CRDS, KubeAPIServer, KubeCluster, install_crds

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def upstream_crds() -> list[Path]:
    files = sorted(UPSTREAM_CRDS.glob("*/*.yaml"))
    assert files, f"no upstream CRDs under {UPSTREAM_CRDS} (set MUSICSPLIT_UPSTREAM_CRDS)"
    return files


@pytest.fixture(scope="session")
def kube(tmp_path_factory) -> KubeCluster:
    """The server and an admin's view of it (kubectl, REST); `kube.server` makes
    ServiceAccount tokens and restarts kube-apiserver."""
    server = KubeAPIServer.start(tmp_path_factory.mktemp("kube-apiserver"))
    try:
        admin = server.kubeconfig(server.root / "admin.kubeconfig")
        install_crds(server, [MANIFESTS / "crd.yaml", MANIFESTS / "peering-crd.yaml", *upstream_crds()])
        yield KubeCluster(server, admin)
    finally:
        server.stop()

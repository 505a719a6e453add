"""tests/kube's real Kubernetes API server is the session fixture `kube` in
tests/conftest.py (tests/images runs the operator's image against the same one:
one server per run). MANIFESTS and upstream_crds stay importable from here."""

from tests.fixtures.kube import MANIFESTS, upstream_crds

__all__ = ["MANIFESTS", "upstream_crds"]

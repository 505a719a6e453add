"""tests/kube's paths. The real Kubernetes API server they run against is the
session fixture `kube` in tests/conftest.py (shared with tests/docs)."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.kube import upstream_crds  # noqa: F401  (tests/kube/test_structural.py)

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"

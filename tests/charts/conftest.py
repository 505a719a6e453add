"""The chart, loaded and rendered offline by Helm's own Go SDK (helm-python-sdk):
with its defaults and with each ci/ values file, once per run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "musicsplit"
NAMESPACE = "musicsplit-system"
# Not "musicsplit": object and job names then differ from manifests/' fixed
# ones, so nothing can pass by matching a hard-coded name.
RELEASE = "prod"
VARIANTS = {"default": {}} | {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text())
    for path in sorted((CHART_DIR / "ci").glob("*-values.yaml"))
}


@dataclass
class Rendered:
    """One render: the manifests (hooks included) by template, parsed, and NOTES.txt."""

    files: dict[str, str]

    @property
    def objects(self) -> list[dict]:
        return [doc for name, text in self.files.items() if not name.endswith("NOTES.txt")
                for doc in yaml.safe_load_all(text) if doc]

    @property
    def notes(self) -> str:
        return next(text for name, text in self.files.items() if name.endswith("NOTES.txt"))

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]


def render(chart: helm.Chart, values: dict | None = None, name: str = RELEASE) -> Rendered:
    return Rendered(chart.render(values=values or {}, name=name, namespace=NAMESPACE, is_install=True))


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def rendered(chart) -> dict[str, Rendered]:
    """Every variant (defaults, ci/*-values.yaml), rendered once."""
    return {variant: render(chart, values) for variant, values in VARIANTS.items()}


@pytest.fixture
def chart_copy(tmp_path) -> Path:
    """A copy of the chart whose files/ can be changed (the symlinks resolved into real folders)."""
    copy = tmp_path / "musicsplit"
    shutil.copytree(CHART_DIR, copy, symlinks=False)
    return copy

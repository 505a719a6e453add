"""Which packages to build: the shared `musicsplit` package plus each component
whose folder is present.

Each component lives in its own folder at the repo root (shared/DESIGN.md);
operator/ holds its package one level down so nothing named `operator` ever
shadows the standard library. A component image (predictor/Dockerfile,
gateway/Dockerfile, operator/Dockerfile) copies only `musicsplit/` and its own
folder, so a static package list naming the other folders would fail to build
there; in a full checkout every package is built, as before.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
COMPONENTS = {
    "musicsplit.predictor": "predictor",
    "musicsplit.gateway": "gateway",
    "musicsplit.operator": "operator/musicsplit_operator",
    "musicsplit.loadtest": "loadtest",
}
# Always built: the shared package, its quality estimate (with the calibration it
# reads at start) and the real golden-set excerpts.
SHARED = ["musicsplit", "musicsplit.quality"]
SHARED_DATA = {"musicsplit": ["golden_audio/*/*.flac", "golden_audio/README.md"],
               "musicsplit.quality": ["calibration.json"]}
# The gateway's rooms (shared/STYLE.md): one sub-package per concern.
SUBPACKAGES = {"musicsplit.gateway": [f"musicsplit.gateway.{sub}" for sub in (
    "api", "api.routers", "jobs", "storage", "upstream", "tenancy", "experiments")]}
# Alembic reads its environment and revisions as files, not as modules: package data.
PACKAGE_DATA = {"musicsplit.gateway.storage": ["migrations/*.py", "migrations/*.mako", "migrations/versions/*.py"],
                # Flag defaults when Unleash is unreachable.
                "musicsplit.gateway.experiments": ["flags_bootstrap.json"],
                # The web page at /ui: static files the gateway serves.
                "musicsplit.gateway": ["ui/*.html", "ui/*.js", "ui/*.css", "ui/*.svg"],
                # The price table predictor/cost.py reads at start.
                "musicsplit.predictor": ["prices.yaml"],
                # The k6 script and the scenarios it and the runner share.
                "musicsplit.loadtest": ["*.js", "*.json"]}

present = {pkg: folder for pkg, folder in COMPONENTS.items() if (HERE / folder / "__init__.py").is_file()}

setup(
    packages=[*SHARED, *present, *(sub for pkg in present for sub in SUBPACKAGES.get(pkg, []))],
    package_dir=present,
    package_data={**SHARED_DATA, **{pkg: files for pkg, files in PACKAGE_DATA.items()
                                    if pkg.rsplit(".", 1)[0] in present or pkg in present}},
)

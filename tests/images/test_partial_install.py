"""A component image copies only musicsplit/ and its own folder; that tree must
still build and run. Built here exactly as the Dockerfile's COPY lines lay it
out (a wheel, offline), then run on its own, away from the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from .dockerfiles import IMAGES, ROOT, Dockerfile

PACKAGES = {"predictor": "musicsplit/predictor", "gateway": "musicsplit/gateway", "operator": "musicsplit/operator"}


def image_tree(component: str, dest):
    """The build context as the image's COPY lines see it."""
    dest.mkdir()
    for sources, _, from_stage in Dockerfile(IMAGES[component][0]).copies():
        if from_stage:
            continue
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, dest / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dest / source)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("component", sorted(IMAGES))
def test_component_tree_builds_a_wheel_of_its_own_packages(component, tmp_path):
    tree = image_tree(component, tmp_path / "src")
    # The build backend pyproject.toml names (PEP 517), as pip would call it; offline.
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    out = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=tree,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("musicsplit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert {p for p in packages if not p.startswith(PACKAGES[component] + "/")} == {
        "musicsplit", "musicsplit/quality", PACKAGES[component]}
    # Shared package data: the quality estimate's calibration, the golden set's real excerpts.
    assert "musicsplit/quality/calibration.json" in names
    assert "musicsplit/golden_audio/lithium-196s/vocals.flac" in names
    if component == "predictor":  # package data: the price table the cost metrics read at start
        assert "musicsplit/predictor/prices.yaml" in names
    if component == "gateway":  # package data: the offline flag defaults, the job store's migrations
        assert "musicsplit/gateway/experiments/flags_bootstrap.json" in names
        assert "musicsplit/gateway/api/routers/separations.py" in names
        migrations = "musicsplit/gateway/storage/migrations"
        assert {f"{migrations}/env.py", f"{migrations}/versions/0001_jobs.py", f"{migrations}/versions/0002_tenant.py",
                f"{migrations}/versions/0005_listening_verdicts.py"} <= set(names)
        # The web page's static files (api/routers/ui.py serves them from the package).
        assert {"musicsplit/gateway/ui/index.html", "musicsplit/gateway/ui/app.js",
                "musicsplit/gateway/ui/style.css"} <= set(names)

    # Run its CLI from the wheel alone: the installed dependencies are visible,
    # this checkout and its editable install are not (no .pth files run).
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    code = ("import sys; sys.path[:0] = [sys.argv[1]]; sys.path += sys.argv[2:]; "
            "from musicsplit.cli import main; main(['serve', '--help'])")
    run = subprocess.run([sys.executable, "-S", "-c", code, str(unpacked), *site_dirs],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "musicsplit" not in {p.split("/")[-1] for p in site_dirs}
    listed = run.stdout[run.stdout.index("{"):run.stdout.index("}") + 1]
    assert listed == "{" + component + "}", run.stdout


def closure(extra: str) -> set[str]:
    """The distributions `pip install musicsplit[extra]` pulls in, resolved
    over what is installed here."""
    seen, todo = set(), [(r, extra) for r in metadata.requires("musicsplit")]
    while todo:
        spec, active_extra = todo.pop()
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate({"extra": active_extra or ""}):
            continue
        name = req.name.lower().replace("_", "-")
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        if name == "musicsplit":
            todo += [(r, e) for e in req.extras for r in metadata.requires("musicsplit")]
            continue
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [(r, e) for r in requires for e in (list(req.extras) or [None])]
    return {name for name, _ in seen}


def test_only_the_predictor_image_carries_torch():
    assert {"torch", "julius", "demucs"} <= closure("predictor")
    for component in ("gateway", "operator"):
        pulled = closure(component)
        assert not pulled & {"torch", "julius", "demucs", "kserve"}, (component, pulled & {"torch", "julius"})

"""The component images, checked statically: no Docker engine runs here, so
none of them has been built on this machine. Each is multi-stage, pinned,
non-root, friendly to a read-only root filesystem, copies only its own
folders, and serves what the chart's probes and ports expect."""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlparse

import helm_python as helm
import pytest

from tests.charts.conftest import CHART_DIR, render

from .dockerfiles import IMAGES, ROOT, SHARED_SOURCES, Dockerfile, exec_form

TARGETS = [(component, target) for component, (_, targets, _) in IMAGES.items() for target in targets]


def dockerfile(component: str) -> Dockerfile:
    return Dockerfile(IMAGES[component][0])


@pytest.fixture(scope="module")
def chart_objects():
    with helm.Chart.load(CHART_DIR) as chart:
        return render(chart, {"examples": {"enabled": True}})


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_multi_stage_with_pinned_bases(component):
    df = dockerfile(component)
    assert len(df.stages) >= 2, "build tools and caches stay in a build stage"
    for base in df.external_bases():
        name, _, digest = base.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        # Pinned: a digest, or a tag naming the exact release (x.y.z) and distribution.
        assert digest.startswith("sha256:") or re.search(r"\d+\.\d+\.\d+", tag), f"{base}: pin a digest or x.y.z tag"
        assert tag != "latest"


@pytest.mark.parametrize(("component", "target"), TARGETS)
def test_runs_as_a_non_root_user(component, target):
    user = dockerfile(component).effective(target, "USER")
    assert user, "set USER"
    uid = user.split(":")[0]
    # Numeric: Kubernetes' runAsNonRoot can only verify a numeric user.
    assert uid.isdigit() and int(uid) != 0, user


@pytest.mark.parametrize(("component", "target"), TARGETS)
def test_read_only_root_filesystem_friendly(component, target):
    df = dockerfile(component)
    env = df.env(target)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # ... compiled at build time instead:
    assert any("compileall" in run for stage in df.stages for run in stage.all("RUN"))
    assert env.get("HOME", "").startswith("/tmp"), "HOME on the writable emptyDir at /tmp"


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_copies_only_its_own_folders(component):
    own = IMAGES[component][2]
    copied = set()
    for sources, _, from_stage in dockerfile(component).copies():
        if not from_stage:
            copied.update(s.rstrip("/") for s in sources)
    assert copied == SHARED_SOURCES | {own}, f"COPY only {sorted(SHARED_SOURCES | {own})}"
    assert not any(stage.all("ADD") for stage in dockerfile(component).stages)


def chart_container(objects, component: str) -> dict:
    if component == "predictor":
        return objects.of_kind("ClusterServingRuntime")[0]["spec"]["containers"][0]
    deployment = objects.one("Deployment", f"prod-musicsplit-{component}")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@pytest.mark.parametrize(("component", "target"), TARGETS)
def test_healthcheck_and_ports_are_the_charts_probes_and_ports(chart_objects, component, target):
    df = dockerfile(component)
    container = chart_container(chart_objects, component)
    probe = container["livenessProbe"]["httpGet"]
    check = df.effective(target, "HEALTHCHECK")
    assert check, "HEALTHCHECK (docker run users; Kubernetes uses the chart's probes)"
    url = urlparse(re.search(r"http://[^'\" ]+", check).group(0))
    assert (url.path, url.port) == (probe["path"], port_number(container, probe["port"]))
    exposed = {int(p.split("/")[0]) for stage in df.chain(target) for e in stage.all("EXPOSE") for p in e.split()}
    assert {p["containerPort"] for p in container["ports"]} <= exposed


@pytest.mark.parametrize(("component", "target"), TARGETS)
def test_command_is_the_components_server(component, target):
    from musicsplit.cli import build_parser

    df = dockerfile(component)
    assert exec_form(df.effective(target, "ENTRYPOINT")) == ["musicsplit"]
    args, extra = build_parser().parse_known_args(exec_form(df.effective(target, "CMD")))
    assert (args.command, args.component) == ("serve", component)
    if component == "predictor":  # KServe's flags, as the ServingRuntime passes them
        from musicsplit.predictor.cli import predictor_parser

        ns = predictor_parser().parse_args(extra)
        assert (ns.model_dir, ns.http_port, ns.grpc_port) == ("/mnt/models", 8080, 8081)


def run_words(df: Dockerfile, target: str) -> list[str]:
    """The words of every RUN along a stage's chain, its ARGs' defaults substituted."""
    words = []
    for stage in df.chain(target):
        args = dict(shlex.split(value)[0].partition("=")[::2] for value in stage.all("ARG"))
        for run in stage.all("RUN"):
            for name in sorted(args, key=len, reverse=True):
                run = re.sub(r"\$\{?" + name + r"\}?(?![A-Za-z0-9_])", lambda _: args[name], run)
            words += shlex.split(run)
    return words


def test_predictor_cpu_and_cuda_variants_pin_torch():
    df = dockerfile("predictor")
    pinned = re.search(r"torch==([\d.]+)", (ROOT / "scripts" / "install.sh").read_text()).group(1)
    cpu, cuda = run_words(df, "deps-cpu"), run_words(df, "deps-cuda")
    assert f"torch=={pinned}+cpu" in cpu and "https://download.pytorch.org/whl/cpu" in cpu
    assert f"torch=={pinned}" in cuda and not any("download.pytorch.org" in w for w in cuda)
    assert any(w.startswith("nvidia-ml-py==") for w in cuda), "GPU utilisation needs NVML"
    # Each variant image carries its own dependencies and the one application layer.
    for target, deps in (("cpu", "deps-cpu"), ("cuda", "deps-cuda")):
        copies = [ins["value"] for ins in df.stage(target).instructions if ins["instruction"] == "COPY"]
        assert copies == [f"--from={deps} /opt/musicsplit /opt/musicsplit",
                          "--from=app /opt/musicsplit-app /opt/musicsplit-app"]
    assert df.stages[-1].name == "cpu", "the default target is the CPU image"
    # The device plugin sets NVIDIA_VISIBLE_DEVICES; an image default of "all" would
    # expose every GPU to pods that asked for none.
    assert "NVIDIA_VISIBLE_DEVICES" not in df.env("cuda")


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_dependencies_install_before_the_source_is_copied(component):
    """A code change must not reinstall torch and the dependencies (CI rebuilds
    the images on every run): they install from pyproject.toml alone, the
    package goes into a layer of its own."""
    df = dockerfile(component)
    installs = [s for s in df.stages if any("-r requirements.txt" in run for run in s.all("RUN"))]
    assert installs
    for stage in installs:
        for upstream in df.chain(stage.name):
            for sources, _, from_stage in df.copies_of(upstream):
                assert from_stage or sources == ["pyproject.toml"], (stage.name, sources)


@pytest.mark.parametrize(("component", "target"), TARGETS)
def test_the_images_own_stages_run_nothing(component, target):
    """podman's build-time mounts (the CA bundle, pip's config) leave empty
    mount points behind in any layer a RUN makes; the stages an image is made
    of (the target down to its base) make none."""
    df = dockerfile(component)
    assert not [stage.name for stage in df.chain(target) if stage.all("RUN")]


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_documented_build_commands_make_the_images_the_chart_runs(chart_objects, component):
    """The `docker build ... -t IMAGE` lines at the top of each Dockerfile are
    the images (and tags) the chart's defaults pull."""
    built = {}
    for comment in dockerfile(component).comments:
        if "docker build" in comment:
            words = shlex.split(comment[comment.index("docker build"):])
            target = words[words.index("--target") + 1] if "--target" in words else None
            built[target] = words[words.index("-t") + 1]
    image = chart_container(chart_objects, component)["image"]
    if component == "predictor":
        assert set(built) == {None, "cuda"}
        assert built["cuda"] == image  # the chart's default variant
        assert built[None] == image.removesuffix("-cuda")
    else:
        assert built == {None: image}

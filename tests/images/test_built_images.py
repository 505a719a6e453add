"""The images built for real and run as the chart runs them.

scripts/build-images.sh builds them (podman where no Docker engine answers;
cached between runs). Each container gets its chart container's args, plain
env values, securityContext (read-only root filesystem, user 65532, every
capability dropped, no privilege escalation) and volumes, and is probed on the
chart's probe paths. A real track goes through the gateway container to a
predictor container. The operator's container reconciles a SeparationModel on
the run's real kube-apiserver (tests/fixtures/kube.py) with only its
ServiceAccount's token.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import helm_python as helm
import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from musicsplit.localstack import free_port, wait_until
from musicsplit.quality import sdr_per_stem
from tests.charts.conftest import CHART_DIR, render
from tests.fixtures.checkpoints import make_model_dir
from tests.fixtures.kube import MANIFESTS, KubeCluster
from tests.operator.cluster import ISVC, SM, KServeSimulator
from tests.operator.test_kubectl import condition, example, has_events, phase_is

from .containers import IMAGES, Container, host_dir, image_size, podman, run_container
from .dockerfiles import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TRACK = ROOT.parent / "shared" / "audio" / "everything-is-free" / "lithium-112s"
if not TRACK.is_dir():  # a worktree: shared/ sits next to the main checkout
    TRACK = Path("/work/shared/audio/everything-is-free/lithium-112s")
STEMS = ["drums", "bass", "other", "vocals"]
# Where PyPI's torch and its dependencies wait as wheels (.ci/install-images.sh),
# for builds where PyTorch's CPU index is unreachable.
TORCH_WHEELS = Path(os.environ.get("MUSICSPLIT_TORCH_WHEELS", "/opt/musicsplit/wheels/torch-2.13.0"))
RUN_ID = uuid.uuid4().hex[:8]
OPERATOR_NS = "images"


@pytest.fixture(scope="module")
def built() -> str:
    """Build (or find cached) the three images; the script's report."""
    missing = [tool for tool in ("podman", "runc") if not shutil.which(tool)]
    assert not missing, f"{missing} not installed: run .ci/install-images.sh"
    cmd = ["bash", "scripts/build-images.sh", "--engine", "podman"]
    if TORCH_WHEELS.is_dir():
        cmd += ["--torch-wheels", str(TORCH_WHEELS)]
    out = subprocess.run([*cmd, "predictor-cpu", "gateway", "operator"], cwd=ROOT, capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout


@pytest.fixture(scope="module")
def network(built):
    name = f"musicsplit-images-{RUN_ID}"
    podman("network", "create", name)
    yield name
    podman("network", "rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def chart():
    """The chart's containers, rendered with the gateway pointed at the test's predictors."""
    values = {"gateway": {"endpoints": [{"model": "dsp-baseline", "url": f"http://dsp-{RUN_ID}:8080", "region": "local"},
                                        {"model": "tiny", "url": f"http://tiny-{RUN_ID}:8080", "region": "local"}],
                          "defaultModel": "dsp-baseline"},
              "unleash": {"enabled": False},
              # The operator's container shares the host's network (the test kube-apiserver listens
              # on 127.0.0.1): free ports there, and a tick short enough for a rollout in seconds.
              "operator": {"healthPort": free_port(), "metricsPort": free_port(), "tickSeconds": 1}}
    with helm.Chart.load(CHART_DIR) as loaded:
        objects = render(loaded, values)
    deployments = {d["metadata"]["name"].rsplit("-", 1)[-1]: d["spec"]["template"]["spec"]
                   for d in objects.of_kind("Deployment")}
    return {
        "predictor": (objects.of_kind("ClusterServingRuntime")[0]["spec"]["containers"][0], {}),
        "gateway": (deployments["gateway"]["containers"][0], deployments["gateway"]["securityContext"]),
        "operator": (deployments["operator"]["containers"][0], deployments["operator"]["securityContext"]),
        "peering": objects.of_kind("ClusterKopfPeering")[0],
    }


def started(container: Container, url: str, timeout: float = 180) -> None:
    """Wait until `url` answers 200; the container's log if it stops or never does."""
    def ready():
        assert container.running(), f"{container.name} exited:\n{container.logs()[-4000:]}"
        try:
            return httpx.get(url, timeout=3).status_code == 200
        except httpx.HTTPError:
            return False
    try:
        wait_until(ready, timeout, f"{url} ({container.name})", interval=0.5)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{container.logs()[-4000:]}") from None


@pytest.fixture(scope="module")
def predictors(built, network, chart, tmp_path_factory):
    """The predictor image twice, as the ServingRuntime runs it: the DSP baseline,
    and a small Demucs model dir mounted read-only at KServe's /mnt/models."""
    spec, _ = chart["predictor"]
    model_dir = make_model_dir(tmp_path_factory.mktemp("image-models") / "tiny", "tiny", bag=1)
    os.chmod(model_dir.parent, 0o755)
    for path in (model_dir, *model_dir.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    runs = {
        "dsp-baseline": ("dsp", {}, "builtin://dsp-baseline"),  # no weights: the baseline is built in
        "tiny": ("tiny", {"/mnt/models": str(model_dir)}, "/mnt/models"),
    }
    containers = {}
    try:
        for model, (prefix, mounts, model_dir_arg) in runs.items():
            args = [a.replace("{{.Name}}", model) for a in spec["args"]]
            args = [f"--model_dir={model_dir_arg}" if a.startswith("--model_dir=") else a for a in args]
            container = run_container(spec, image=IMAGES["predictor"], name=f"{prefix}-{RUN_ID}", network=network,
                                      volumes={"tmp": "tmpfs", **mounts}, args=args, publish=[8080],
                                      env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            containers[model] = container
        for model, container in containers.items():
            started(container, container.url(8080) + spec["readinessProbe"]["httpGet"]["path"])
        yield containers
    finally:
        for container in containers.values():
            container.remove()


@pytest.fixture(scope="module")
def gateway(predictors, network, chart, tmp_path_factory):
    spec, pod_security = chart["gateway"]
    data = host_dir(tmp_path_factory.mktemp("gateway-volume") / "data")
    container = run_container(spec, image=IMAGES["gateway"], name=f"gateway-{RUN_ID}", network=network,
                              pod_security=pod_security, volumes={"data": data, "tmp": "tmpfs"}, publish=[8080, 9091])
    try:
        started(container, container.url(8080) + spec["readinessProbe"]["httpGet"]["path"], timeout=90)
        yield container, Path(data)
    finally:
        container.remove()


def inspect(image: str) -> dict:
    """What an image holds, asked from inside it with its own Python."""
    probe = (
        "import importlib.util as u, json, os, shutil, sys; "
        "mods = ['torch', 'demucs', 'kserve', 'kopf', 'fastapi', 'musicsplit.predictor', 'musicsplit.gateway', "
        "'musicsplit.operator']; "
        "print(json.dumps({'modules': [m for m in mods if u.find_spec(m)], "
        "'tools': [t for t in ('pip', 'pip3', 'gcc', 'cc', 'g++', 'make') if shutil.which(t)], "
        "'paths': [p for p in ('/etc/pip.conf', '/run/musicsplit-build', '/src', '/root/.cache', '/tmp/.cache') "
        "if os.path.exists(p)], 'uid': os.getuid(), 'gid': os.getgid(), "
        "'nvidia': os.path.isdir(os.path.join(sys.prefix, 'lib', 'python%d.%d' % sys.version_info[:2], "
        "'site-packages', 'nvidia'))}))"
    )
    out = podman("run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python", image, "-c", probe)
    return json.loads(out.stdout.strip().splitlines()[-1])


# docs/images.md: the budgets, from the measured sizes (the predictor's depends
# on which torch the build gets, so it has none here).
BUDGET_MB = {"gateway": 750, "operator": 800}


def test_build_reports_each_image_and_its_size_within_budget(built):
    lines = {line.split()[0]: line.split()[1:] for line in built.splitlines() if line.startswith("localhost/")}
    assert set(lines) == set(IMAGES.values()), built
    for component, name in IMAGES.items():
        size, unit = lines[name]
        assert unit == "MB" and int(size) == image_size(name) // 1_000_000, (name, size)
        assert int(size) <= BUDGET_MB.get(component, 10**6), f"{name}: {size} MB, budget {BUDGET_MB[component]} MB"


@pytest.mark.parametrize(("component", "holds", "lacks"), [
    ("predictor", {"torch", "demucs", "kserve", "musicsplit.predictor"},
     {"kopf", "musicsplit.gateway", "musicsplit.operator"}),  # fastapi: KServe serves with it
    ("gateway", {"fastapi", "musicsplit.gateway"},
     {"torch", "demucs", "kserve", "kopf", "musicsplit.predictor", "musicsplit.operator"}),
    ("operator", {"kopf", "musicsplit.operator"},
     {"torch", "demucs", "kserve", "musicsplit.predictor", "musicsplit.gateway"}),  # fastapi: mlflow-skinny's
])
def test_each_image_holds_its_component_only_as_a_non_root_user(built, component, holds, lacks):
    found = inspect(IMAGES[component])
    assert holds <= set(found["modules"]) and not lacks & set(found["modules"]), found["modules"]
    assert (found["uid"], found["gid"]) == (65532, 65532)
    # No build tools and nothing of the build (its CA and pip config were mounts, not files).
    assert found["tools"] == [] and found["paths"] == [], found
    image = json.loads(podman("image", "inspect", IMAGES[component]).stdout)[0]
    assert image["Config"]["User"] == "65532:65532"
    assert image["Healthcheck"]["Test"][0] == "CMD", "HEALTHCHECK kept (docker format)"
    names = podman("run", "--rm", "--entrypoint", "getent", IMAGES[component], "passwd", "65532").stdout
    groups = podman("run", "--rm", "--entrypoint", "getent", IMAGES[component], "group", "65532").stdout
    assert names.startswith("musicsplit:") and groups.startswith("musicsplit:")


def test_predictor_containers_answer_the_charts_probes_and_health_check(predictors, chart):
    spec, _ = chart["predictor"]
    for model, container in predictors.items():
        for probe in ("livenessProbe", "readinessProbe"):
            assert httpx.get(container.url(8080) + spec[probe]["httpGet"]["path"], timeout=5).status_code == 200
        ready = httpx.get(f"{container.url(8080)}/v2/models/{model}/ready", timeout=5)
        assert ready.status_code == 200, (model, ready.text)
        assert podman("healthcheck", "run", container.name, check=False).returncode == 0, container.logs()[-2000:]
        ids = container.exec("python", "-c", "import os; print(os.getuid(), os.getgid())").stdout.split()
        assert ids == ["65532", "65532"]


def read(content: bytes) -> np.ndarray:
    audio, rate = sf.read(io.BytesIO(content), dtype="float32", always_2d=True)
    assert rate == 44100
    return audio.T


def separate(gateway_url: str, model: str, track: Path) -> dict[str, np.ndarray]:
    with open(track, "rb") as f:
        r = httpx.post(f"{gateway_url}/v1/separations", files={"file": (track.name, f, "audio/flac")},
                       data={"model": model}, timeout=60)
    assert r.status_code == 202, r.text
    job_url = f"{gateway_url}/v1/separations/{r.json()['id']}"

    def done():
        doc = httpx.get(job_url, timeout=10).json()
        return doc if doc["status"] in ("succeeded", "failed", "cancelled") else None
    doc = wait_until(done, 240, f"{model} job", interval=0.5)
    assert doc["status"] == "succeeded", doc
    assert doc["model"] == model and doc["model_version"]
    return {stem: read(httpx.get(gateway_url + url, timeout=30).content) for stem, url in doc["stems"].items()}


def test_gateway_container_separates_a_real_track_through_the_baseline_predictor(gateway):
    from musicsplit.predictor.baseline import DSPBaseline

    container, data = gateway
    mix = read((TRACK / "mixture.flac").read_bytes())
    stems = separate(container.url(8080), "dsp-baseline", TRACK / "mixture.flac")
    assert sorted(stems) == sorted(STEMS) and all(s.shape == mix.shape for s in stems.values())
    # The baseline's stems add back up to the mixture (16-bit wav each).
    assert np.max(np.abs(sum(stems.values()) - mix)) < 1e-3
    # The same separation as this checkout's baseline, measured against the true stems.
    truth = {s: read((TRACK / f"{s}.flac").read_bytes()) for s in STEMS}
    here = dict(zip(DSPBaseline.sources, DSPBaseline().separate(mix)))
    expected, got = sdr_per_stem(truth, here), sdr_per_stem(truth, stems)
    assert all(abs(got[s] - expected[s]) < 0.1 for s in STEMS), (got, expected)
    assert got["drums"] > 3 and got["bass"] > 3, got  # separated: mixture / 4 scores under 2 dB
    # The job store and the results are in the data volume, owned by the container's user.
    written = [p for p in data.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_uid == 65532 for p in written)


def test_gateway_container_routes_to_the_demucs_predictor(gateway):
    container, _ = gateway
    mix = read((TRACK / "mixture.flac").read_bytes())
    stems = separate(container.url(8080), "tiny", TRACK / "mixture.flac")
    assert sorted(stems) == sorted(STEMS)
    for stem, audio in stems.items():  # random weights: shape and sanity, not quality
        assert audio.shape == mix.shape and np.isfinite(audio).all() and np.abs(audio).max() > 0, stem


def test_read_only_containers_never_tried_to_write_outside_their_volumes(gateway, predictors):
    container, _ = gateway
    httpx.get(container.url(9091) + "/metrics", timeout=5).raise_for_status()
    for c in (container, *predictors.values()):
        assert c.running(), c.logs()[-3000:]
        log = c.logs()
        assert "Read-only file system" not in log and "Permission denied" not in log, log[-3000:]


def test_operator_container_reconciles_a_model_with_only_its_service_account(built, chart, kube, tmp_path):
    """The operator's image as the chart runs it (args, env, securityContext, volumes; tick,
    probe and metrics ports from chart values), in the host's network namespace so that the
    run's kube-apiserver on 127.0.0.1 is its in-cluster API. Its only credential is what a
    kubelet mounts: its ServiceAccount's token (RBAC from manifests/rbac.yaml), the cluster's
    CA and its namespace. KServe's controller is the simulator tests/kube uses."""
    spec, pod_security = chart["operator"]
    server = kube.server
    kube.kubectl("apply", "-f", str(MANIFESTS / "rbac.yaml"))
    kube.apply(chart["peering"])  # the chart's ClusterKopfPeering, named by its --peering
    server.ensure_namespace(OPERATOR_NS)
    account = tmp_path / "serviceaccount"  # what the kubelet projects for the pod's ServiceAccount
    account.mkdir(mode=0o755)
    (account / "token").write_text(server.service_account_token("musicsplit-system", "musicsplit-operator"))
    (account / "namespace").write_text("musicsplit-system")
    shutil.copy(server.ca, account / "ca.crt")
    for path in account.iterdir():
        os.chmod(path, 0o644)
    admin = KubeCluster(server, server.kubeconfig(tmp_path / "admin.kubeconfig", namespace=OPERATOR_NS),
                        namespace=OPERATOR_NS)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    probe = spec["livenessProbe"]["httpGet"]
    with KServeSimulator(admin, period=0.2):
        container = run_container(spec, image=IMAGES["operator"], name=f"operator-{RUN_ID}", network="host",
                                  pod_security=pod_security,
                                  volumes={"tmp": "tmpfs", "golden-cache": "tmpfs",
                                           "/var/run/secrets/kubernetes.io/serviceaccount": str(account)},
                                  env={"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                       "KUBERNETES_SERVICE_PORT": str(server.port)})
        try:
            started(container, f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}", timeout=90)
            admin.apply(example("imaged"))
            st = phase_is(admin, "imaged", "Succeeded")
            assert st["stableVersion"] == "4.0.0" and st["history"][0]["outcome"] == "promoted", st
            assert condition(st, "Ready")["status"] == "True" and condition(st, "SpecValid")["status"] == "True"
            isvc = admin.get(ISVC, "imaged")
            owner = isvc["metadata"]["ownerReferences"][0]
            # blockOwnerDeletion: admitted (OwnerReferencesPermissionEnforcement) because the
            # ServiceAccount may update separationmodels/finalizers.
            assert owner["uid"] == admin.get(SM, "imaged")["metadata"]["uid"] and owner["blockOwnerDeletion"] is True
            assert isvc["spec"]["predictor"]["model"]["storageUri"] == "gs://musicsplit-models/htdemucs/4.0.0"
            assert has_events(admin, "imaged", "Deploying", "Promoted")
            metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).text
            promoted = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                        if s.name == "musicsplit_rollouts_total"
                        and s.labels == {"namespace": OPERATOR_NS, "name": "imaged", "outcome": "promoted"}]
            assert promoted == [1.0], metrics[-3000:]
            # Deleted: the operator releases its finalizer (the simulator collects the InferenceService).
            admin.kubectl("delete", "sm", "imaged", "--wait=false")
            admin.wait(lambda: admin.get(SM, "imaged") is None, 30, message="the model gone (finalizer released)")
            assert container.running()
            log = container.logs()
            refused = [line for line in log.splitlines() if "Forbidden" in line or re.search(r"\b403\b", line)]
            assert "Traceback" not in log and refused == [], log[-4000:]
            assert "Read-only file system" not in log and "Permission denied" not in log, log[-4000:]
        finally:
            container.remove()

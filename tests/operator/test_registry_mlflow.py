"""The operator against a real MLflow server (`mlflow server`, SQLite backend,
a file artifact store under tmp, on a free 127.0.0.1 port): a SeparationModel
naming `mlflow://models/sep@champion` is deployed from the model version the
alias points at, then, the alias moved and a new resolution asked for, the
version it points at now; MLflow's model versions get the golden SDR and the rollout
outcome as tags.

The registered artifacts are real musicsplit model dirs (Demucs checkpoints,
musicsplit.yaml), served by real predictor processes from MLflow's artifact
store; a real Prometheus scrapes them (the write-back asks it for the
release's latency and cost: nobody uses these models, so those are left out).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from musicsplit.localstack import free_port, start_predictor, terminate, wait_until
from tests.fixtures.checkpoints import make_model_dir
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.operator.cluster import ISVC, SM, Cluster, KServeSimulator, Operator

pytestmark = pytest.mark.slow

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAME = "sep"


class MlflowServer:
    def __init__(self, workdir: Path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "mlflow.log"
        # --no-serve-artifacts: model versions' download URIs are the store's own
        # (file:// here, s3:// in production), which KServe can fetch.
        self.proc = subprocess.Popen(
            ["mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
             "--default-artifact-root", (workdir / "artifacts").as_uri(), "--no-serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> None:
        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, 240, "mlflow server answering")  # its first start migrates the SQLite schema

    def stop(self) -> None:
        terminate(self.proc)


def register(client, run_id: str, artifact_uri: str, model_dir: Path, release: str) -> str:
    """A model version whose artifacts are `model_dir`, tagged with its release version."""
    client.log_artifacts(run_id, str(model_dir), f"model-{release}")
    mv = client.create_model_version(NAME, f"{artifact_uri}/model-{release}", run_id,
                                     tags={"musicsplit.version": release})
    return mv.version


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """MLflow with `sep` versions 1 (release 1.0.0, alias champion) and 2
    (release 2.0.0), predictors serving each from MLflow's artifact store,
    and a Prometheus scraping them."""
    tmp = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(tmp)
    procs, prom = [], None
    try:
        from mlflow import MlflowClient  # imported while the server starts: both are slow

        server.wait()
        client = MlflowClient(server.url, server.url)
        run = client.create_run(client.create_experiment("musicsplit-releases"))
        client.create_registered_model(NAME)
        versions = {}
        for release, seed in (("1.0.0", 0), ("2.0.0", 1)):
            mv = register(client, run.info.run_id, run.info.artifact_uri,
                          make_model_dir(tmp / f"dir-{release}", NAME, version=release, seed=seed), release)
            versions[release] = (mv, client.get_model_version_download_uri(NAME, mv))
        client.set_registered_model_alias(NAME, "champion", versions["1.0.0"][0])
        for release, (_, uri) in versions.items():
            assert uri.startswith("file://"), uri
            procs.append(start_predictor(uri.removeprefix("file://"), NAME, log_dir=tmp,
                                         env={"MUSICSPLIT_EXPECTED_VERSION": release}))
        prom = Prometheus(tmp, jobs=[scrape_job("predictors", [p.url.removeprefix("http://") for p in procs],
                                                "predictor", namespace="default")])
        yield server, client, versions, dict(zip(versions, procs)), prom
    finally:
        if prom:
            prom.stop()
        for p in procs:
            p.stop()
        server.stop()


def status(cluster) -> dict:
    return (cluster.get(SM, NAME) or {}).get("status") or {}


def tags(client, version: str) -> dict[str, str]:
    return dict(client.get_model_version(NAME, version).tags)


def test_a_release_named_by_an_mlflow_alias_is_resolved_rolled_out_and_reported(registry, tmp_path):
    server, client, versions, procs, prom = registry
    endpoints = {uri: procs[release].url for release, (_, uri) in versions.items()}
    (v1, uri1), (v2, uri2) = versions["1.0.0"], versions["2.0.0"]
    with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, tmp_path / "operator.log", tick=1.0,
                      env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url,
                           "MUSICSPLIT_OPERATOR_MLFLOW_TRACKING_URI": server.url})
        try:
            cluster.apply({
                "apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
                "metadata": {"name": NAME, "namespace": "default"},
                "spec": {"model": {"architecture": "htdemucs", "storageUri": f"mlflow://models/{NAME}@champion"},
                         "replicas": {"min": 1, "max": 1},
                         "rollout": {"steps": [50, 100], "interval": "5s", "progressDeadline": "5m"},
                         "analysis": {"goldenSet": {"builtin": True, "maxSdrDropDb": 100}}}})
            # The alias resolved: KServe is given the artifact's own storage URI,
            # the release version comes from the model version's tag.
            st = cluster.wait(lambda: (s := status(cluster)).get("phase") == "Succeeded" and s, 180,
                              message="1.0.0 deployed from MLflow")
            assert st["stableVersion"] == "1.0.0" and st["stableStorageUri"] == uri1
            assert cluster.get(ISVC, NAME)["spec"]["predictor"]["model"]["storageUri"] == uri1
            reg = st["registry"]
            assert (reg["uri"], reg["modelName"], reg["modelVersion"], reg["version"], reg["storageUri"]) == (
                f"mlflow://models/{NAME}@champion", NAME, v1, "1.0.0", uri1)
            assert {c["type"]: c["status"] for c in st["conditions"]}["RegistryResolved"] == "True"

            # MLflow hears the first deployment's outcome and the stable's golden SDR.
            # (MLflow sets one tag per request: the report is whole once its last tag is there.)
            t1 = cluster.wait(lambda: (t := tags(client, v1)).get("musicsplit.rollout.outcome") == "promoted"
                              and "musicsplit.golden_sdr_measured_at" in t and t, 120,
                              message="version 1's tags in MLflow")
            measured = status(cluster)["goldenBaseline"]
            assert t1["musicsplit.golden_sdr_measured_at"] == measured["measuredAt"]
            assert float(t1["musicsplit.golden_sdr_db.mean"]) == pytest.approx(measured["meanSdr"], abs=1e-3)
            assert {k: float(v) for k, v in t1.items() if k.startswith("musicsplit.golden_sdr_db.")} == {
                f"musicsplit.golden_sdr_db.{stem}": pytest.approx(sdr, abs=1e-3)
                for stem, sdr in {"mean": measured["meanSdr"], **measured["perStem"]}.items()}
            assert set(measured["perStem"]) == {"drums", "bass", "other", "vocals"}
            assert t1["musicsplit.golden_set"] == "builtin"
            assert t1["musicsplit.rollout.separation_model"] == "default/sep"
            # Nobody used the model: no latency or cost figures rather than made-up ones.
            assert "musicsplit.latency_p99_seconds" not in t1 and "musicsplit.cost_per_audio_minute_usd" not in t1

            # The alias moves; the owner asks for a new resolution (without it the
            # resolution in status stays: test_registry.py).
            client.set_registered_model_alias(NAME, "champion", v2)
            cluster.kubectl("annotate", "--overwrite", "separationmodel", NAME, "musicsplit.io/action=resolve")
            st = cluster.wait(lambda: (s := status(cluster)).get("canaryVersion") == "2.0.0" and s, 60,
                              message="2.0.0 resolved and rolled out as the canary")
            assert st["canaryStorageUri"] == uri2 and st["registry"]["modelVersion"] == v2
            # Its golden SDR reaches MLflow while it is a canary.
            cluster.wait(lambda: "musicsplit.golden_sdr_measured_at" in tags(client, v2), 120,
                         message="version 2's golden SDR in MLflow")

            cluster.kubectl("annotate", "--overwrite", "separationmodel", NAME, "musicsplit.io/action=promote")
            st = cluster.wait(lambda: (s := status(cluster)).get("phase") == "Succeeded"
                              and s.get("stableVersion") == "2.0.0" and s, 60, message="2.0.0 promoted")
            t2 = cluster.wait(lambda: (t := tags(client, v2)).get("musicsplit.rollout.outcome") == "promoted" and t,
                              60, message="version 2's outcome in MLflow")
            assert "musicsplit.io/action=promote" in t2["musicsplit.rollout.reason"]
            assert t2["musicsplit.rollout.started_at"] <= t2["musicsplit.rollout.finished_at"]
            assert status(cluster)["registryReports"].get("error") is None
            assert tags(client, v1)["musicsplit.rollout.outcome"] == "promoted"  # version 1's record stays
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]

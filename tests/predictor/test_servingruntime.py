"""manifests/servingruntime.yaml runs the predictor the operator's InferenceServices ask for."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml
import pytest

from musicsplit.predictor.cli import predictor_parser
from musicsplit.predictor.settings import PredictorSettings

RUNTIME = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "servingruntime.yaml").read_text())


def test_runtime_args_are_the_predictor_command_line():
    container = RUNTIME["spec"]["containers"][0]
    args = [a.replace("{{.Name}}", "htdemucs") for a in container["args"]]
    assert args[:2] == ["serve", "predictor"]
    ns = predictor_parser().parse_args(args[2:])
    assert (ns.model_name, ns.model_dir, ns.http_port) == ("htdemucs", "/mnt/models", 8080)


def test_runtime_env_names_are_predictor_settings():
    fields = set(PredictorSettings.model_fields)
    for var in RUNTIME["spec"]["containers"][0]["env"]:
        assert var["name"].startswith("MUSICSPLIT_")
        assert var["name"].removeprefix("MUSICSPLIT_").lower() in fields, var["name"]


def test_runtime_serves_the_inference_services_the_operator_writes():
    from musicsplit.operator import router
    from musicsplit.operator.router import Route
    from musicsplit.operator.spec import parse_spec

    spec = parse_spec({"model": {"architecture": "htdemucs", "version": "1", "storageUri": "gs://m/1"},
                       "stems": ["vocals", "no_vocals"], "costPerGpuSecond": 0.0002})
    model = router.inference_service("htdemucs", "ml", spec, Route("gs://m/1", None))["spec"]["predictor"]["model"]
    assert RUNTIME["kind"] == "ClusterServingRuntime" and RUNTIME["metadata"]["name"] == model["runtime"]
    assert model["modelFormat"]["name"] in {f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]}
    # Every variable the operator sets is one the predictor reads.
    fields = set(PredictorSettings.model_fields)
    assert all(e["name"].removeprefix("MUSICSPLIT_").lower() in fields for e in model["env"]), model["env"]
    settings = PredictorSettings(**{e["name"].removeprefix("MUSICSPLIT_").lower(): e["value"] for e in model["env"]})
    assert settings.gpu_price_per_second == 0.0002 and settings.stems == "vocals,no_vocals"


@pytest.mark.slow
def test_runtime_probes_exist_on_the_predictor(predictor_url):
    container = RUNTIME["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert httpx.get(predictor_url + container[probe]["httpGet"]["path"]).status_code == 200

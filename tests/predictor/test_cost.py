"""docs/cost.md and the predictor's `cost_usd` are one formula over one price table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as thttp
import yaml

from musicsplit.predictor.cost import PRICES_FILE, load_prices
from musicsplit.predictor.loading import LoadedModel, Manifest
from musicsplit.predictor.model import SeparationModel
from musicsplit.predictor.settings import PredictorSettings

ROOT = Path(__file__).resolve().parents[2]


def cost_report():
    spec = importlib.util.spec_from_file_location("cost_report", ROOT / "benchmarks" / "cost_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cost_report"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_served_request_costs_compute_seconds_times_cores_times_the_table_price(predictor_url):
    x = (np.random.default_rng(0).standard_normal((2, 44100)) * 0.1).astype(np.float32)
    client = thttp.InferenceServerClient(predictor_url.removeprefix("http://"), network_timeout=60)
    tensor = thttp.InferInput("audio", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    params = client.infer("tiny", [tensor], parameters={"sample_rate": 44100, "shifts": 0}).get_response()["parameters"]
    # The test server runs one torch thread (musicsplit.localstack): one core.
    per_core_hour = yaml.safe_load(PRICES_FILE.read_text())["cpu_core"]["usd_per_hour"]
    assert params["cost_usd"] == pytest.approx(params["compute_seconds"] * 1 * per_core_hour / 3600, rel=1e-3)


def test_the_documented_cpu_costs_are_what_the_predictor_charges():
    report = cost_report()
    rows = report.cpu_rows()
    assert rows, "benchmarks/results/cpu-models.json holds no model"
    for row in rows:
        model = SeparationModel("costcheck", PredictorSettings(cpu_threads=int(row.devices), warmup=False))
        assert model.cost(row.compute_seconds_per_track) == pytest.approx(row.cost_per_track, rel=1e-12), row


@pytest.mark.parametrize("gpu_name,key", [("Tesla T4", "T4"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
                                          ("NVIDIA A10G", "A10G"), ("NVIDIA A100-SXM4-40GB", "A100"),
                                          ("NVIDIA H100 80GB HBM3", "H100"), ("Some Future GPU", "A10G")])
def test_a_gpu_replica_charges_the_table_price_for_its_gpu(gpu_name, key):
    # The one thing faked: the GPU a replica would have found (torch.cuda.get_device_name).
    model = SeparationModel("costcheck", PredictorSettings(warmup=False))
    model.loaded = LoadedModel(None, "m", "1", "htdemucs", "cuda:0", Manifest())
    model._gpu_name = gpu_name
    row = cost_report().Row("htdemucs", key, "bf16", 0.02, 1, load_prices().gpus[key].per_second)
    assert model.cost(row.compute_seconds_per_track) == pytest.approx(row.cost_per_track, rel=1e-12)
    configured = SeparationModel("costcheck", PredictorSettings(warmup=False, gpu_price_per_second=0.001))
    configured.loaded, configured._gpu_name = model.loaded, gpu_name
    assert configured.cost(10.0) == pytest.approx(0.01)  # a configured price wins over the table


def test_docs_cost_md_is_generated_from_the_current_table_and_measurements():
    proc = subprocess.run([sys.executable, "benchmarks/cost_report.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = (ROOT / "docs" / "cost.md").read_text()
    for key, price in load_prices().gpus.items():
        assert f"| {key} | {price.usd_per_hour:g} |" in doc

"""The predictor's metric contract (docs/metrics.md): the `source` label and output issues."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families

from musicsplit.predictor.metrics import request_source
from musicsplit.quality import COMPONENTS, QualityReport

MODEL = {"model": "tiny", "model_version": "1.0.0"}


def samples(url: str) -> list:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(all_samples, name: str, **labels) -> float:
    return sum(s.value for s in all_samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def infer(url: str, x: np.ndarray, model: str = "tiny", headers: dict | None = None):
    client = thttp.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    tensor = thttp.InferInput("audio", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return client.infer(model, [tensor], parameters={"sample_rate": 44100, "shifts": 0}, headers=headers)


def clip(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((2, int(seconds * 44100))) * 0.1).astype(np.float32)


@pytest.mark.parametrize("headers,source", [
    (None, "user"),
    ({}, "user"),
    ({"X-Musicsplit-Source": "probe"}, "probe"),
    ({"x-musicsplit-source": " Shadow "}, "shadow"),
    ({"X-Musicsplit-Source": "admin"}, "user"),
    ({"X-Musicsplit-Source": ""}, "user"),
    ({"X-Other": "probe"}, "user"),
])
def test_request_source_is_one_of_three_values(headers, source):
    assert request_source(headers) == source


def test_output_issues_of_a_report():
    assert QualityReport(0.0, -100.0, nonfinite=True).issues() == ["non_finite"]
    assert QualityReport(0.5, 80.0, silent_stems=["drums"]).issues() == ["silent_stem"]
    # Silence in, silence out: nothing is wrong with the output.
    assert QualityReport(1.0, 100.0, silent_stems=["drums", "bass"], silent_input=True).issues() == []
    assert QualityReport(0.9, 20.0).issues() == []


SOURCED = ("musicsplit_request_duration_seconds_count", "audio_separation_quality_count",
           "musicsplit_mixture_snr_db_count", "musicsplit_real_time_factor_count",
           "musicsplit_cost_per_separation_usd_count", "musicsplit_quality_estimated_sdr_db_count")


def test_probe_and_shadow_requests_are_counted_apart_from_users(predictor_url):
    before = samples(predictor_url)
    infer(predictor_url, clip(seed=1), headers={"X-Musicsplit-Source": "probe"})
    infer(predictor_url, clip(seed=2), headers={"X-Musicsplit-Source": "shadow"})
    infer(predictor_url, clip(seed=3), headers={"X-Musicsplit-Source": "probe"})
    after = samples(predictor_url)

    def delta(name, **labels):
        return value(after, name, **MODEL, **labels) - value(before, name, **MODEL, **labels)

    assert delta("musicsplit_requests_total", source="probe", outcome="success") == 2
    assert delta("musicsplit_requests_total", source="shadow", outcome="success") == 1
    assert delta("musicsplit_requests_total", source="user") == 0
    for name in SOURCED:
        assert delta(name, source="probe") == 2, name
        assert delta(name, source="user") == 0, name
    for component in COMPONENTS:  # every component of the estimate, each its own series
        assert delta("musicsplit_quality_component_count", source="probe", component=component) == 2, component
    for stem in ("drums", "bass", "other", "vocals"):  # output drift: each stem's energy share
        assert delta("musicsplit_stem_energy_share_count", source="probe", stem=stem) == 2, stem
    assert delta("musicsplit_audio_seconds_total", source="probe") == pytest.approx(1.0)
    assert delta("musicsplit_compute_seconds_total", source="shadow", device="cpu") > 0
    assert delta("musicsplit_cost_usd_total", source="shadow", device="cpu") > 0
    assert delta("musicsplit_cost_usd_total", source="user") == 0


def test_an_unknown_source_is_a_user_never_a_new_label_value(predictor_url):
    before = samples(predictor_url)
    infer(predictor_url, clip(seed=4), headers={"X-Musicsplit-Source": "canary-2026"})
    after = samples(predictor_url)
    assert value(after, "musicsplit_requests_total", source="user", outcome="success", **MODEL) == \
        value(before, "musicsplit_requests_total", source="user", outcome="success", **MODEL) + 1
    # (musicsplit_model_info's `source` is where the weights came from: another label.)
    assert {s.labels["source"] for s in after
            if "source" in s.labels and s.name != "musicsplit_model_info"} <= {"user", "probe", "shadow"}


def test_bad_input_from_a_probe_is_counted_as_the_probes(predictor_url):
    before = samples(predictor_url)
    response = httpx.post(f"{predictor_url}/v2/models/tiny/infer", json={"inputs": []},
                          headers={"X-Musicsplit-Source": "probe"}, timeout=30)
    assert response.status_code == 400
    after = samples(predictor_url)
    labels = {**MODEL, "source": "probe", "outcome": "bad_input"}
    assert value(after, "musicsplit_requests_total", **labels) == value(before, "musicsplit_requests_total", **labels) + 1


def test_grpc_metadata_carries_the_source(predictor):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from kserve.protocol.infer_type import InferInput, InferRequest

    tensor = InferInput("audio", [2, 22050], "FP32")
    tensor.set_data_from_numpy(clip(seed=5))
    request = InferRequest("tiny", [tensor], parameters={"sample_rate": 44100, "shifts": 0}).to_grpc()
    before = samples(predictor.url)
    with grpc.insecure_channel(predictor.grpc_url) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=60, metadata=(("x-musicsplit-source", "shadow"),))
    after = samples(predictor.url)
    for name, extra in (("musicsplit_requests_total", {"outcome": "success"}),
                        ("audio_separation_quality_count", {})):
        labels = {**MODEL, "source": "shadow", **extra}
        assert value(after, name, **labels) == value(before, name, **labels) + 1, name


@pytest.mark.slow
def test_user_outcome_and_issue_series_exist_at_load(tiny_model_dir, logs_dir):
    from musicsplit.localstack import start_predictor

    # A fresh process: no request has touched these series yet.
    proc = start_predictor(tiny_model_dir, "tiny", log_dir=logs_dir, args=["--no_warmup"])
    try:
        found = {(s.name, s.labels.get("outcome") or s.labels.get("issue")): s.value
                 for s in samples(proc.url) if s.labels.get("source") == "user"}
    finally:
        proc.stop()
    for outcome in ("success", "bad_input", "too_large", "saturated", "not_ready", "error"):
        assert found[("musicsplit_requests_total", outcome)] == 0, outcome
    for issue in ("silent_stem", "non_finite"):
        assert found[("musicsplit_output_issues_total", issue)] == 0, issue


def test_a_silent_stem_is_counted_as_an_output_issue(baseline_url):
    # A 60 Hz hum: the baseline puts it all in bass; vocals and other come out silent.
    t = np.arange(44100) / 44100
    hum = (0.05 * np.sin(2 * np.pi * 60 * t)).astype(np.float32)
    labels = {"model": "dsp-baseline", "source": "user", "issue": "silent_stem"}
    before = value(samples(baseline_url), "musicsplit_output_issues_total", **labels)
    result = infer(baseline_url, np.stack([hum, hum]), model="dsp-baseline")
    assert "vocals" in result.get_response()["parameters"]["silent_stems"]
    assert value(samples(baseline_url), "musicsplit_output_issues_total", **labels) == before + 1
    # Music is no issue: the counter stays put.
    infer(baseline_url, clip(1.0, seed=6), model="dsp-baseline")
    assert value(samples(baseline_url), "musicsplit_output_issues_total", **labels) == before + 1

"""Serving precision: what `auto` picks, what is refused, and that reduced precision agrees with fp32."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as thttp

from musicsplit.golden import golden_set
from musicsplit.predictor import precision
from musicsplit.predictor.loading import DemucsSeparator, ModelLoadError, load
from musicsplit.predictor.precision import Capability, PrecisionError, resolve
from musicsplit.quality import sdr

ZEN4 = Capability("cpu", frozenset({"avx2", "avx512f", "avx512_bf16"}), name="AVX512")
SAPPHIRE_RAPIDS = Capability("cpu", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}))
SKYLAKE = Capability("cpu", frozenset({"avx2", "avx512f"}), name="AVX512")
OLD_CPU = Capability("cpu", frozenset({"sse4_2", "avx2"}), name="AVX2")
H100, A10G, T4, P100 = (Capability("cuda", cuda_capability=c, name=n) for c, n in
                        (((9, 0), "NVIDIA H100"), ((8, 6), "NVIDIA A10G"), ((7, 5), "Tesla T4"), ((6, 0), "Tesla P100")))


@pytest.mark.parametrize("cap,expected", [
    (ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"), (SKYLAKE, "fp32"), (OLD_CPU, "fp32"), (Capability("cpu"), "fp32"),
    (H100, "bf16"), (A10G, "bf16"), (T4, "fp16"), (P100, "fp32"),
])
def test_auto_picks_what_the_device_does_well(cap, expected):
    assert resolve("auto", cap) == expected


@pytest.mark.parametrize("requested,cap,served", [
    ("fp32", OLD_CPU, "fp32"), ("fp32", T4, "fp32"), ("BF16", ZEN4, "bf16"), (" fp16 ", SAPPHIRE_RAPIDS, "fp16"),
    ("fp16", T4, "fp16"), ("bf16", A10G, "bf16"), (None, ZEN4, "bf16"), ("", SKYLAKE, "fp32"),
])
def test_an_explicit_precision_the_device_runs_well_is_served(requested, cap, served):
    assert resolve(requested, cap) == served


@pytest.mark.parametrize("requested,cap,message", [
    ("fp16", ZEN4, r"fp16 needs a CPU with avx512_fp16 or amx_fp16.*slower than fp32"),
    ("bf16", SKYLAKE, r"bf16 needs a CPU with avx512_bf16 or amx_bf16"),
    ("bf16", T4, r"bf16 needs a GPU of compute capability 8.0.*Tesla T4 is 7.x: use fp16 or auto"),
    ("fp16", P100, r"fp16 needs tensor cores"),
    ("bfloat", ZEN4, r"precision 'bfloat' is not one of fp32, bf16, fp16, auto \(MUSICSPLIT_PRECISION\)"),
    ("int8", H100, r"not one of"),
])
def test_a_precision_the_device_cannot_run_well_is_refused(requested, cap, message):
    with pytest.raises(PrecisionError, match=message):
        resolve(requested, cap)


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert precision.cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


def test_load_refuses_an_unsupported_precision_with_a_clear_message(tiny_model_dir, monkeypatch):
    # The CPU is the one thing faked here: a Skylake-class CPU, AVX512 without bf16 or fp16.
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: SKYLAKE.cpu_flags)
    for requested in ("fp16", "bf16"):
        with pytest.raises(ModelLoadError, match=f"precision {requested} needs a CPU with"):
            load(str(tiny_model_dir), "cpu", requested)
    assert load(str(tiny_model_dir), "cpu", "auto").precision == "fp32"
    with pytest.raises(ModelLoadError, match="precision 'fp64' is not one of"):
        load("builtin://dsp-baseline", "cpu", "fp64")
    assert load("builtin://dsp-baseline", "cpu", "bf16").precision == "fp32"  # no model to reduce


def test_bf16_output_agrees_with_fp32(tiny_model_dir):
    """Built directly, so the check runs on CPUs without native bf16 too (emulated there, slower)."""
    fp32 = load(str(tiny_model_dir), "cpu", "fp32").separator
    bf16 = DemucsSeparator(fp32.model, "cpu", "bf16")
    item = golden_set(n=1, seconds=2.0)[0]
    reference, reduced = fp32.separate(item.mixture, shifts=0), bf16.separate(item.mixture, shifts=0)
    assert reduced.dtype == np.float32 and reduced.shape == reference.shape
    agreement = [sdr(r, b) for r, b in zip(reference, reduced)]
    assert min(agreement) > 40.0, agreement  # measured 45-52 dB per stem
    assert max(agreement) < 90.0, agreement  # and it did run at bf16: not bit-identical to fp32


def test_response_and_model_info_say_the_precision(predictor_url, baseline_url):
    from prometheus_client.parser import text_string_to_metric_families

    served = resolve("auto", precision.capability_of("cpu"))
    x = (np.random.default_rng(0).standard_normal((2, 22050)) * 0.1).astype(np.float32)
    for url, model, expected in ((predictor_url, "tiny", served), (baseline_url, "dsp-baseline", "fp32")):
        client = thttp.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
        tensor = thttp.InferInput("audio", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        response = client.infer(model, [tensor], parameters={"sample_rate": 44100, "shifts": 0}).get_response()
        assert response["parameters"]["precision"] == expected, model
        info = [s for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
                for s in f.samples if s.name == "musicsplit_model_info"]
        assert [s.labels["precision"] for s in info] == [expected], model


@pytest.mark.slow
def test_a_misspelt_precision_fails_the_load_and_says_so(tiny_model_dir, logs_dir):
    from musicsplit.localstack import start_predictor

    proc = start_predictor(tiny_model_dir, "tiny", log_dir=logs_dir, wait="live",
                           env={"MUSICSPLIT_PRECISION": "bf61"})
    try:
        import time

        deadline = time.monotonic() + 30
        while "failed to load" not in (response := httpx.post(f"{proc.url}/v2/models/tiny/infer", json={})).text:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
        assert response.status_code == 503
        assert "precision 'bf61' is not one of fp32, bf16, fp16, auto" in response.json()["error"]
        assert httpx.get(f"{proc.url}/v2/models/tiny/ready").status_code == 503
    finally:
        proc.stop()

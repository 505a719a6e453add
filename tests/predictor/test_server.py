"""The predictor as clients see it: a real process, real HTTP and gRPC, standard v2 clients."""

from __future__ import annotations

import concurrent.futures
import io
import re

import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.fixtures.checkpoints import make_model_dir
from musicsplit.localstack import start_predictor
from musicsplit.quality import COMPONENTS, shipped_calibration

STEMS = ["drums", "bass", "other", "vocals"]


def clip(seconds=2.0, channels=2, rate=44100, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((channels, int(seconds * rate))) * scale).astype(np.float32)


def wav(samples, rate, subtype="PCM_16", fmt="WAV"):
    buf = io.BytesIO()
    sf.write(buf, samples.T, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def http_infer(url, x, params, binary=True, outputs=None):
    client = thttp.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    tensor = thttp.InferInput("audio", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outs = [thttp.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    return client.infer("tiny", [tensor], outputs=outs, parameters=params)


def bytes_infer(url, blob, params=None, model="tiny"):
    client = thttp.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    tensor = thttp.InferInput("audio", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([blob], dtype=object), binary_data=True)
    return client.infer(model, [tensor], parameters=params or {})


def post_binary(url, x, model="tiny", **params):
    """A binary-extension request sent by hand (JSON cannot carry NaN/Inf)."""
    import orjson

    head = orjson.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"sample_rate": 44100, **params}})
    return httpx.post(f"{url}/v2/models/{model}/infer", content=head + x.tobytes(),
                      headers={"inference-header-content-length": str(len(head))}, timeout=60)


def post_json(url, doc, model="tiny"):
    return httpx.post(f"{url}/v2/models/{model}/infer", json=doc, timeout=60)


# -- health and metadata ---------------------------------------------------------------

def test_ready_and_metadata_describe_the_model(predictor_url):
    assert httpx.get(f"{predictor_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{predictor_url}/v2/models/tiny/ready").json()["ready"] is True
    meta = httpx.get(f"{predictor_url}/v2/models/tiny").json()
    assert meta["inputs"][0]["name"] == "audio"
    assert [o["name"] for o in meta["outputs"]] == STEMS


# -- separation --------------------------------------------------------------------------

def test_binary_v2_returns_one_tensor_per_stem_with_version_quality_and_cost(predictor_url, tiny_model_dir):
    from demucs.api import Separator
    import torch

    from musicsplit.predictor.precision import autocast, capability_of, resolve

    x = clip(3.0)
    result = http_infer(predictor_url, x, {"sample_rate": 44100, "shifts": 0})
    response = result.get_response()
    assert response["model_version"] == "1.0.0"
    params = response["parameters"]
    assert params["model_version"] == "1.0.0" and params["device"] == "cpu"
    # The default precision is `auto`: what this CPU does well (bf16 where it has AVX512-BF16).
    assert params["precision"] == resolve("auto", capability_of("cpu"))
    assert params["audio_seconds"] == pytest.approx(3.0)
    assert params["compute_seconds"] > 0 and params["cost_usd"] > 0
    assert 0.0 <= params["quality_score"] <= 1.0 and "mixture_snr_db" in params
    # The estimate's components, each on its own, and which calibration made it.
    assert all(0.0 <= params[f"quality_{c}"] <= 1.0 for c in COMPONENTS)
    assert params["quality_calibration"] == shipped_calibration().version
    # The stems are exactly what Demucs itself computes for this input at that precision.
    reference = Separator(model="tiny", repo=tiny_model_dir, shifts=0, progress=False, device="cpu")
    with autocast("cpu", params["precision"]):
        _, expected = reference.separate_tensor(torch.from_numpy(x), 44100)
    for stem in STEMS:
        np.testing.assert_allclose(result.as_numpy(stem), expected[stem].numpy(), atol=1e-4)


def test_json_and_binary_give_the_same_stems(predictor_url):
    x = clip(1.0, seed=3)
    params = {"sample_rate": 44100, "shifts": 0}
    as_json = http_infer(predictor_url, x, params, binary=False, outputs=["vocals"])
    as_binary = http_infer(predictor_url, x, params, binary=True, outputs=["vocals"])
    assert [o["name"] for o in as_json.get_response()["outputs"]] == ["vocals"]
    np.testing.assert_allclose(as_json.as_numpy("vocals"), as_binary.as_numpy("vocals"), atol=1e-6)


def test_encoded_mono_48k_file_is_upmixed_resampled_and_returned_at_its_rate(predictor_url):
    x = clip(1.5, channels=1, rate=48000, seed=4)[:, :72001]  # not a multiple of 160: 48k -> 44.1k is inexact
    result = bytes_infer(predictor_url, wav(x, 48000), {"output_format": "flac", "stems": "vocals,no_vocals"})
    response = result.get_response()
    warnings = response["parameters"]["warnings"]
    assert "mono_upmixed" in warnings and "resampled" in warnings
    assert response["parameters"]["sample_rate"] == 48000
    assert [o["name"] for o in response["outputs"]] == ["vocals", "no_vocals"]
    vocals, rate = sf.read(io.BytesIO(result.as_numpy("vocals")[0]))
    assert rate == 48000 and vocals.shape == (x.shape[1], 2)


def test_clipping_input_is_served_with_a_warning(predictor_url):
    x = np.clip(clip(1.0, seed=5, scale=2.0), -1, 1)
    result = bytes_infer(predictor_url, wav(x, 44100, subtype="FLOAT"))
    assert "clipping" in result.get_response()["parameters"]["warnings"]


def grpc_infer(target, x=None, blob=None, **params):
    """The standard v2 gRPC service (the proto Triton and KServe share), called directly."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
    from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

    tensor = InferInput("audio", list(x.shape) if x is not None else [1], "FP32" if x is not None else "BYTES")
    tensor.set_data_from_numpy(x if x is not None else np.array([blob], dtype=object))
    request = InferRequest("tiny", [tensor], parameters=params).to_grpc()
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert isinstance(reply, pb.ModelInferResponse)
    return InferResponse.from_grpc(reply)


def test_grpc_v2_serves_the_same_model(predictor):
    import grpc

    x = clip(1.0, seed=6)
    result = grpc_infer(predictor.grpc_url, x, sample_rate=44100, shifts=0)
    drums = result.get_output_by_name("drums").as_numpy()
    assert drums.shape == x.shape
    assert result.parameters["model_version"].string_param == "1.0.0"
    http = http_infer(predictor.url, x, {"sample_rate": 44100, "shifts": 0})
    np.testing.assert_allclose(drums, http.as_numpy("drums"), atol=1e-5)
    with pytest.raises(grpc.RpcError) as error:
        grpc_infer(predictor.grpc_url, blob=b"not audio")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not decode the audio" in error.value.details()


# -- bad input: the right status, a message that says what to fix, never a 500 -----------------

def fp32_doc(x, rate=44100, **params):
    return {"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "parameters": {"sample_rate": rate, **params}}


def test_nan_audio_is_a_400(predictor_url):
    x = clip(0.5)
    x[1, 100:110] = np.nan
    response = post_binary(predictor_url, x)
    assert response.status_code == 400
    assert response.json()["error"] == "audio contains 10 NaN or infinite samples; send finite PCM values"


@pytest.mark.parametrize("make_doc,message", [
    (lambda: fp32_doc(clip(0.5, rate=8000), rate=8000), "below the minimum of 16000 Hz"),
    (lambda: fp32_doc(clip(0.2, channels=3)), "3 channels, at most 2"),
    (lambda: fp32_doc(np.zeros((2, 0), np.float32)), "empty"),
    (lambda: fp32_doc(clip(0.2), stems="guitar"), "unknown stem 'guitar'"),
    (lambda: fp32_doc(clip(0.2), shifts=99), "shifts=99 is out of range"),
    (lambda: {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": ["bm90IGF1ZGlv"]}]},
     "could not decode the audio"),
])
def test_bad_input_is_a_400_naming_the_problem(predictor_url, make_doc, message):
    response = post_json(predictor_url, make_doc())
    assert response.status_code == 400, response.text
    assert re.search(message, response.json()["error"])


def test_unknown_stem_is_refused_before_any_inference(predictor_url):
    before = metric(httpx.get(f"{predictor_url}/metrics").text, "musicsplit_compute_seconds_total")
    response = post_binary(predictor_url, clip(1.0), stems="vocals,guitar")
    assert response.status_code == 400 and "unknown stem 'guitar'" in response.json()["error"]
    assert metric(httpx.get(f"{predictor_url}/metrics").text, "musicsplit_compute_seconds_total") == before


def test_empty_file_is_a_400(predictor_url):
    with pytest.raises(InferenceServerException, match=r"\[400\].*empty"):
        bytes_infer(predictor_url, b"")


def test_unknown_model_is_a_404(predictor_url):
    assert post_json(predictor_url, fp32_doc(clip(0.2)), model="nope").status_code == 404


# -- metrics ------------------------------------------------------------------------------

def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_carry_model_and_version_and_count_outcomes(predictor_url):
    before = httpx.get(f"{predictor_url}/metrics").text
    http_infer(predictor_url, clip(0.5, seed=7), {"sample_rate": 44100})
    post_binary(predictor_url, np.full((2, 4410), np.inf, np.float32))
    after = httpx.get(f"{predictor_url}/metrics").text
    labels = {"model": "tiny", "model_version": "1.0.0"}
    for outcome in ("success", "bad_input"):
        assert metric(after, "musicsplit_requests_total", outcome=outcome, **labels) == \
            metric(before, "musicsplit_requests_total", outcome=outcome, **labels) + 1
    for name in ("audio_separation_quality_count", "musicsplit_request_duration_seconds_count",
                 "musicsplit_mixture_snr_db_count", "musicsplit_real_time_factor_count"):
        assert metric(after, name, **labels) == metric(before, name, **labels) + 1, name
    assert metric(after, "musicsplit_audio_seconds_total", **labels) >= 0.5
    assert metric(after, "musicsplit_cost_usd_total", device="cpu", **labels) > 0
    assert metric(after, "musicsplit_cost_monthly_estimate_usd", **labels) > 0
    assert 'le="0.5"' in after and 'le="600.0"' in after  # quality and latency buckets
    assert metric(after, "musicsplit_model_info", architecture="htdemucs", **labels) == 1
    assert metric(after, "musicsplit_model_ready", model="tiny") == 1
    # Outcome series exist from the load on, at 0 until they happen.
    assert all(f'outcome="{o}"' in before for o in ("error", "saturated", "too_large", "not_ready"))


# -- limits, saturation, readiness, tracing: a strict server ---------------------------------

class OTLPReceiver:
    """A local OTLP/HTTP endpoint that keeps the spans the real exporter sends."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans = self.spans = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        spans.extend((s.name, s.trace_id.hex()) for s in ss.spans)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def otlp():
    receiver = OTLPReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def strict(tiny_model_dir, logs_dir, otlp):
    env = {
        "MUSICSPLIT_MAX_AUDIO_SECONDS": "6", "MUSICSPLIT_MAX_REQUEST_BYTES": str(2_000_000),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    proc = start_predictor(tiny_model_dir, "tiny", log_dir=logs_dir, env=env,
                           args=["--max_inflight", "1", "--max_queue", "0"])
    yield proc
    proc.stop()


@pytest.mark.slow
def test_too_long_audio_is_a_400_and_too_big_a_body_a_413(strict):
    long = post_binary(strict.url, clip(7.0, channels=1))
    assert long.status_code == 400 and "over the limit of 6 s" in long.json()["error"]
    compressed = wav(np.zeros((2, 44100 * 8), np.float32), 44100, subtype="PCM_16", fmt="FLAC")
    assert len(compressed) < 100_000  # small on the wire, 8 s once decoded: refused from its header
    with pytest.raises(InferenceServerException, match=r"\[400\].*over the limit of 6 s"):
        bytes_infer(strict.url, compressed)
    big = httpx.post(f"{strict.url}/v2/models/tiny/infer", content=b"x" * 2_000_001,
                     headers={"inference-header-content-length": "2"})
    assert big.status_code == 413 and "over the limit of 2000000 bytes" in big.json()["error"]


@pytest.mark.slow
def test_excess_requests_get_429_with_retry_after_not_a_queue(strict):
    x = clip(5.0, seed=8)  # 1.8 MB binary: under the strict server's 2 MB body limit

    def call(_):
        return post_binary(strict.url, x, shifts=2)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(call, range(3)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert "retry later" in refused.json()["error"]


def test_trace_context_from_the_caller_reaches_the_predictor_spans(strict, otlp):
    import time

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    x = clip(0.5, seed=9)
    doc = fp32_doc(x)
    assert httpx.post(f"{strict.url}/v2/models/tiny/infer", json=doc, headers=headers, timeout=60).status_code == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        names = {name for name, tid in otlp.spans if tid == trace_id}
        if {"decode", "validate", "resample", "inference", "encode"} <= names:
            break
        time.sleep(0.2)
    assert {"decode", "validate", "resample", "inference", "encode"} <= names, otlp.spans


@pytest.mark.slow
def test_a_model_that_fails_to_load_is_reported_not_crashed_on(tmp_path, logs_dir):
    directory = make_model_dir(tmp_path / "broken", "tiny")
    victim = next(directory.glob("*.th"))
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = start_predictor(directory, "tiny", log_dir=logs_dir, wait="live")
    try:
        import time

        deadline, attempts = time.monotonic() + 30, 0
        while True:  # "still loading", then "failed to load": 503 + Retry-After throughout
            ready = httpx.get(f"{proc.url}/v2/models/tiny/ready")
            assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
            # The readiness probe's path too: no traffic to a pod whose model is not loaded.
            probe = httpx.get(f"{proc.url}/v2/health/ready")
            assert probe.status_code == 503 and int(probe.headers["retry-after"]) >= 1
            infer = post_json(proc.url, fp32_doc(clip(0.2)))
            attempts += 1
            assert infer.status_code == 503 and int(infer.headers["retry-after"]) >= 1
            if "failed to load" in infer.json()["error"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "sha256 mismatch" in infer.json()["error"]
        assert "failed to load" in httpx.get(f"{proc.url}/v2/health/ready").json()["error"]
        assert httpx.get(f"{proc.url}/v2/health/live").status_code == 200
        metrics = httpx.get(f"{proc.url}/metrics").text
        assert metric(metrics, "musicsplit_model_load_failures_total", model="tiny") == 1
        assert metric(metrics, "musicsplit_requests_total", outcome="not_ready") == attempts
        assert proc.alive()
    finally:
        proc.stop()


@pytest.mark.slow
def test_a_model_with_other_stems_than_the_deployment_expects_does_not_serve(tiny_model_dir, logs_dir):
    proc = start_predictor(tiny_model_dir, "tiny", log_dir=logs_dir, wait="live",
                           env={"MUSICSPLIT_STEMS": "drums,bass,other,vocals,guitar,piano"})
    try:
        import time

        deadline = time.monotonic() + 30
        while "failed to load" not in (error := post_json(proc.url, fp32_doc(clip(0.2))).json()["error"]):
            assert time.monotonic() < deadline, error
            time.sleep(0.2)
        assert "expects stems ['drums', 'bass', 'other', 'vocals', 'guitar', 'piano']" in error
    finally:
        proc.stop()

import base64
import email.utils
import gc
import time
import tracemalloc

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, deserialize_bytes_tensor

from musicsplit.audio import Audio, decode, encode
from musicsplit.golden import golden_set
from musicsplit.validation import Limits, conform, join_warnings, validate
from musicsplit.v2client import (
    JSON_LENGTH_HEADER, AsyncV2Client, Separation, V2Client, V2Error, decode_response, encode_request,
    raise_for_status,
)

WAV = np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32)
OPTIONS = dict(stems=["vocals", "drums"], shifts=2, overlap=0.5, segment=7.5, output_format="flac")


def _kserve_parse(body: bytes, headers: dict) -> InferRequest:
    return InferRequest.from_bytes(body, int(headers.get(JSON_LENGTH_HEADER, len(body))), "m")


@pytest.mark.parametrize("binary", [True, False])
def test_waveform_request_parses_with_kserve(binary):
    body, headers = encode_request(WAV, 44100, binary=binary, **OPTIONS)
    request = _kserve_parse(body, headers)
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("audio", "FP32", [2, 5000])
    np.testing.assert_array_equal(tensor.as_numpy(), WAV)
    assert request.parameters == {
        "sample_rate": 44100, "stems": "vocals,drums", "shifts": 2, "overlap": 0.5, "segment": 7.5,
        "output_format": "flac", **({"binary_data_output": True} if binary else {}),
    }
    assert request.use_binary_outputs is binary
    if binary:
        assert len(body) == int(headers[JSON_LENGTH_HEADER]) + WAV.nbytes  # no JSON numbers


def test_encoded_file_request_is_a_length_prefixed_bytes_tensor():
    blob = encode(WAV, 44100, "wav")
    body, headers = encode_request(encoded=blob)
    header_len = int(headers[JSON_LENGTH_HEADER])
    [tensor] = orjson.loads(body[:header_len])["inputs"]
    assert (tensor["datatype"], tensor["shape"]) == ("BYTES", [1])
    raw = body[header_len:header_len + tensor["parameters"]["binary_data_size"]]
    assert deserialize_bytes_tensor(raw).tolist() == [blob]
    # JSON cannot carry raw bytes: base64 text, as the predictor expects.
    body, headers = encode_request(encoded=blob, binary=False)
    [element] = _kserve_parse(body, headers).inputs[0].data
    np.testing.assert_array_equal(decode(base64.b64decode(element)).samples, decode(blob).samples)


def test_binary_encoding_matches_tritonclient():
    blob = encode(WAV, 44100, "wav")
    for ours, datatype, array in ((dict(samples=WAV, sample_rate=44100), "FP32", WAV),
                                  (dict(encoded=blob), "BYTES", np.array([blob], dtype=object))):
        body, headers = encode_request(**ours)
        tensor = triton.InferInput("audio", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        theirs, their_len = triton.InferenceServerClient.generate_request_body([tensor])
        our_len = int(headers[JSON_LENGTH_HEADER])
        assert body[our_len:] == theirs[their_len:]
        assert orjson.loads(body[:our_len])["inputs"] == orjson.loads(theirs[:their_len])["inputs"]


def _response(outputs, binary, parameters=None) -> tuple[bytes, dict]:
    response = InferResponse(response_id="r", model_name="m", model_version="v7", infer_outputs=outputs,
                             parameters=parameters, use_binary_outputs=binary)
    rest, json_length = response.to_rest()
    if json_length is None:
        return orjson.dumps(rest), {}
    return rest, {JSON_LENGTH_HEADER: str(json_length)}


@pytest.mark.parametrize("binary", [True, False])
def test_decodes_kserve_fp32_responses(binary):
    outputs = []
    for name, stem in (("vocals", WAV), ("drums", -WAV)):
        out = InferOutput(name=name, shape=list(stem.shape), datatype="FP32")
        out.set_data_from_numpy(stem, binary_data=binary)
        outputs.append(out)
    # The predictor's real warnings, joined the way it joins them.
    clipped = Audio(np.ones((1, 44100), np.float32), 48000)
    _, changes = conform(clipped, 44100, 2)
    warnings = validate(clipped, Limits()) + changes
    params = {"model_version": "v7", "quality_score": 0.93, "warnings": join_warnings(warnings),
              "sample_rate": 44100}
    result = decode_response(*_response(outputs, binary, params))
    assert list(result.stems) == ["vocals", "drums"]
    np.testing.assert_array_equal(result.stems["drums"], -WAV)
    assert result.stems["vocals"].dtype == np.float32
    assert result.model_version == "v7" and result.quality_score == pytest.approx(0.93)
    assert result.warnings == warnings and len(warnings) == 3
    assert result.sample_rate == 44100 and result.model_name == "m" and result.encoded == {}


def test_decodes_encoded_stems_and_keeps_their_bytes():
    blob = encode(WAV, 22050, "flac")
    out = InferOutput(name="bass", shape=[1], datatype="BYTES")
    out.set_data_from_numpy(np.array([blob], dtype=object), binary_data=True)
    result = decode_response(*_response([out], True))
    assert result.encoded == {"bass": blob} and result.sample_rate == 22050
    np.testing.assert_allclose(result.stems["bass"], np.clip(WAV, -1, 1), atol=1e-6)
    # tritonclient reads the same bytes the same way
    body, headers = _response([out], True)
    parsed = triton.InferResult.from_response_body(body, header_length=int(headers[JSON_LENGTH_HEADER]))
    assert parsed.as_numpy("bass").tolist() == [blob]


def test_errors_carry_status_message_and_retry_after():
    response = httpx.Response(503, json={"error": "model tiny is still loading", "code": "not_ready"},
                              headers={"Retry-After": "5"})
    with pytest.raises(V2Error) as info:
        raise_for_status(response)
    err = info.value
    assert (err.status, err.retry_after, err.code) == (503, 5.0, "not_ready")
    assert err.message == "model tiny is still loading"
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    with pytest.raises(V2Error) as info:
        raise_for_status(httpx.Response(429, text="busy", headers={"Retry-After": later}))
    assert info.value.message == "busy" and 100 < info.value.retry_after <= 120
    raise_for_status(httpx.Response(200, json={}))


def test_request_needs_exactly_one_kind_of_audio():
    with pytest.raises(ValueError):
        encode_request()
    with pytest.raises(ValueError):
        encode_request(WAV, 44100, encoded=b"x")
    with pytest.raises(ValueError):
        encode_request(WAV)


def test_a_source_other_than_probe_or_shadow_is_refused_before_sending():
    sent = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(500))
    with V2Client("http://predictor", transport=transport) as client, pytest.raises(ValueError, match="probe"):
        client.separate("m", WAV, 44100, source="user")
    assert sent == []


# -- against a real predictor serving the DSP baseline ----------------------------------


@pytest.fixture(scope="module")
def item():
    return golden_set(n=1, seconds=3.0)[0]


@pytest.fixture(scope="module")
def client(baseline_url):
    with V2Client(baseline_url, timeout=60) as c:
        yield c


def _check(result: Separation, mixture: np.ndarray):
    assert list(result.stems) == ["drums", "bass", "other", "vocals"]
    np.testing.assert_allclose(sum(result.stems.values()), mixture, atol=1e-4)
    assert result.model_version and result.sample_rate == 44100
    assert 0.0 <= result.quality_score <= 1.0
    assert float(result.parameters["quality_consistency"]) > 0.99  # the baseline adds up by construction
    assert float(result.parameters["audio_seconds"]) == pytest.approx(3.0, abs=0.01)


def test_health_and_metadata(client):
    assert client.live() and client.ready("dsp-baseline")
    assert not client.ready("no-such-model")
    meta = client.metadata("dsp-baseline")
    assert meta["name"] == "dsp-baseline"
    assert [o["name"] for o in meta["outputs"]] == ["drums", "bass", "other", "vocals"]


def test_binary_and_json_requests_give_the_same_stems(client, item):
    binary = client.separate("dsp-baseline", item.mixture, 44100)
    _check(binary, item.mixture)
    as_json = client.separate("dsp-baseline", item.mixture, 44100, binary=False)
    _check(as_json, item.mixture)
    for name in binary.stems:
        np.testing.assert_allclose(binary.stems[name], as_json.stems[name], atol=1e-6)


def test_encoded_file_in_encoded_stems_out(client, item):
    for binary in (True, False):
        result = client.separate("dsp-baseline", encoded=encode(item.mixture, 44100, "wav"),
                                 stems=["vocals", "no_vocals"], output_format="flac", binary=binary)
        assert list(result.encoded) == ["vocals", "no_vocals"]
        assert all(blob[:4] == b"fLaC" for blob in result.encoded.values())
        np.testing.assert_allclose(result.stems["vocals"] + result.stems["no_vocals"], item.mixture, atol=1e-4)


def test_server_errors_become_v2_errors(client):
    with pytest.raises(V2Error) as info:
        client.separate("dsp-baseline", encoded=b"not audio at all")
    assert info.value.status == 400 and "decode" in info.value.message
    with pytest.raises(V2Error) as info:
        client.separate("dsp-baseline", np.zeros((2, 8000), np.float32), 8000)
    assert info.value.status == 400 and "sample rate" in info.value.message
    with pytest.raises(V2Error) as info:
        client.separate("no-such-model", WAV, 44100)
    assert info.value.status == 404


async def test_async_client_separates(baseline_url, item):
    async with AsyncV2Client(baseline_url, timeout=60) as client:
        assert await client.live() and await client.ready("dsp-baseline")
        assert (await client.metadata("dsp-baseline"))["name"] == "dsp-baseline"
        result = await client.separate("dsp-baseline", item.mixture, 44100, stems="bass",
                                       headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
        assert list(result.stems) == ["bass"] and result.stems["bass"].shape == item.mixture.shape
        with pytest.raises(V2Error) as info:
            await client.separate("dsp-baseline", encoded=b"")
        assert info.value.status == 400


async def test_a_response_body_is_freed_when_the_caller_drops_it(baseline_url):
    """No reference cycle keeps a response (megabytes of stems) alive until a full GC:
    with the cyclic collector off, memory after each separation is back where it was."""
    samples = golden_set(n=1, seconds=6.0, seed=3)[0].mixture
    body_bytes = 4 * samples.nbytes  # four fp32 stems come back per call
    gc.disable()
    tracemalloc.start()
    try:
        async with AsyncV2Client(baseline_url, timeout=60) as client:
            await client.separate("dsp-baseline", samples, 44100)  # connection and caches set up
            start = tracemalloc.get_traced_memory()[0]
            for _ in range(3):
                result = await client.separate("dsp-baseline", samples, 44100)
                assert set(result.stems) == {"drums", "bass", "other", "vocals"}
                del result
            retained = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
        gc.enable()
    assert retained < body_bytes / 2, f"{retained / 2**20:.1f} MiB still held after 3 calls"

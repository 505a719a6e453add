"""The v2 wire format: what a client sends is what the model gets, no copies, clear 400s."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
import soundfile as sf
from kserve.protocol.infer_type import serialize_byte_tensor

from musicsplit.errors import BadAudio, BadRequest, PayloadTooLarge
from musicsplit.predictor.codec import parse_params, parse_request, parse_rest_request, select_stems
from musicsplit.validation import Limits


def binary_body(inputs: list[tuple[str, str, list[int], bytes]], parameters=None) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
            for n, d, s, raw in inputs
        ],
        "parameters": parameters or {},
    }
    head = orjson.dumps(header)
    return head + b"".join(raw for *_, raw in inputs), len(head)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples.T, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_binary_fp32_input_reaches_the_model_unchanged():
    x = np.random.default_rng(1).standard_normal((2, 1000)).astype(np.float32)
    body, n = binary_body([("audio", "FP32", [2, 1000], x.tobytes())], {"sample_rate": 44100})
    parsed = parse_request(parse_rest_request(body, str(n), "m"), Limits())
    np.testing.assert_array_equal(parsed.audio.samples, x)
    assert parsed.audio.sample_rate == 44100


def test_binary_bytes_input_holding_a_wav_file_is_decoded():
    """KServe's own parser decodes BYTES as UTF-8 and fails on real audio files."""
    x = (np.random.default_rng(2).standard_normal((1, 48000)) * 0.1).astype(np.float32)
    blob = wav_bytes(x, 48000)
    raw = serialize_byte_tensor(np.array([blob], dtype=object)).item()
    body, n = binary_body([("audio", "BYTES", [1], raw)])
    parsed = parse_request(parse_rest_request(body, str(n), "m"), Limits())
    assert parsed.audio.sample_rate == 48000 and parsed.audio.channels == 1
    np.testing.assert_allclose(parsed.audio.samples, x, atol=1 / 32768)


def test_json_bytes_input_is_base64():
    import base64

    blob = wav_bytes(np.zeros((2, 4410), np.float32), 44100)
    doc = {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(blob).decode()]}]}
    parsed = parse_request(parse_rest_request(orjson.dumps(doc), None, "m"), Limits())
    assert parsed.audio.samples.shape == (2, 4410)


@pytest.mark.parametrize("body,length,message", [
    (b"not json", None, "not valid v2 JSON"),
    (b"{}", None, '"inputs" list'),
    (b'{"inputs":[{"name":"audio"}]}', None, "name, shape and datatype"),
    (b'{"inputs":[{"name":"audio","shape":[1],"datatype":"FP32"}]}', None, "neither data nor binary_data_size"),
    (b'{"inputs":[]}', "999", "does not fit"),
])
def test_malformed_requests_say_what_is_wrong(body, length, message):
    with pytest.raises(BadRequest, match=message):
        parse_rest_request(body, length, "m")


@pytest.mark.parametrize("doc,message", [
    ({"inputs": [{"name": "audio", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": "x"}}]},
     "binary_data_size must be a non-negative integer"),
    ({"inputs": [{"name": "audio", "shape": [1], "datatype": "FP32", "data": [0], "parameters": [1]}]},
     '"parameters" an object'),
    ({"inputs": [{"name": "audio", "shape": [1], "datatype": "FP32", "data": [0]}], "outputs": ["vocals"]},
     '"outputs" must be a list of objects'),
    ({"inputs": [{"name": "audio", "shape": [1], "datatype": "FP32", "data": [0]}], "parameters": [1]},
     'request "parameters" must be an object'),
    (["not", "an", "object"], '"inputs" list'),
])
def test_wrongly_typed_fields_are_400s_not_500s(doc, message):
    with pytest.raises(BadRequest, match=message):
        parse_rest_request(orjson.dumps(doc), None, "m")


def test_stems_of_the_wrong_type_are_a_400():
    with pytest.raises(BadRequest, match="comma-separated string"):
        parse_params({"stems": 5})


def test_binary_tensor_longer_than_the_body_is_refused():
    body, n = binary_body([("audio", "FP32", [4], b"\0" * 16)])
    with pytest.raises(BadRequest, match="claims 16 bytes, the body holds 4"):
        parse_rest_request(body[:-12], str(n), "m")


def _request(doc):
    return parse_rest_request(orjson.dumps(doc), None, "m")


def test_wrong_input_name_lists_what_was_sent():
    doc = {"inputs": [{"name": "waveform", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}]}
    with pytest.raises(BadRequest, match=r"no input named 'audio' \(got \['waveform'\]\)"):
        parse_request(_request(doc), Limits())


def test_fp32_without_sample_rate_is_refused():
    doc = {"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}]}
    with pytest.raises(BadRequest, match="sample_rate"):
        parse_request(_request(doc), Limits())


def test_transposed_audio_is_refused_with_the_fix():
    doc = {"inputs": [{"name": "audio", "datatype": "FP32", "shape": [4, 2], "data": [0] * 8}],
           "parameters": {"sample_rate": 44100}}
    with pytest.raises(BadAudio, match=r"\[channels, samples\], not \[samples, channels\]"):
        parse_request(_request(doc), Limits())


def test_int_pcm_is_refused_naming_the_types_accepted():
    doc = {"inputs": [{"name": "audio", "datatype": "INT16", "shape": [1, 2], "data": [0, 0]}],
           "parameters": {"sample_rate": 44100}}
    with pytest.raises(BadAudio, match="FP32 .* or BYTES"):
        parse_request(_request(doc), Limits())


def test_encoded_file_over_the_size_limit_is_413():
    blob = wav_bytes(np.zeros((2, 44100), np.float32), 44100)
    raw = serialize_byte_tensor(np.array([blob], dtype=object)).item()
    body, n = binary_body([("audio", "BYTES", [1], raw)])
    with pytest.raises(PayloadTooLarge):
        parse_request(parse_rest_request(body, str(n), "m"), Limits(max_bytes=1000))


@pytest.mark.parametrize("params,message", [
    ({"shifts": -1}, "shifts=-1 is out of range"),
    ({"shifts": "many"}, "not a int"),
    ({"overlap": 0.95}, "overlap=0.95 is out of range"),
    ({"segment": 0.1}, "segment=0.1 is out of range"),
    ({"output_format": "mp3"}, "output_format 'mp3'"),
])
def test_bad_parameters_are_400s(params, message):
    with pytest.raises(BadRequest, match=message):
        parse_params(params)


def test_parameters_and_requested_outputs_choose_stems():
    assert parse_params({"stems": "vocals, drums"}).stems == ["vocals", "drums"]
    assert parse_params({}, ["bass"]).stems == ["bass"]
    assert parse_params({}).stems is None


def test_no_stem_is_the_sum_of_the_others():
    stems = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    names = ["drums", "bass", "other", "vocals"]
    picked = select_stems(stems, names, ["vocals", "no_vocals"])
    np.testing.assert_array_equal(picked["vocals"], stems[3])
    np.testing.assert_array_equal(picked["no_vocals"], stems[0] + stems[1] + stems[2])
    with pytest.raises(BadRequest, match="unknown stem 'guitar'"):
        select_stems(stems, names, ["guitar"])

"""KServe v2 request parsing and response building for separation.

Kept apart from the model so the wire format is tested on its own: input
`audio` is FP32 [channels, samples] + `sample_rate`, or BYTES [1] holding an
encoded file; outputs are one tensor per stem, FP32 or encoded wav/flac.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
from kserve.protocol.infer_type import (
    InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput, to_http_parameters,
)

from musicsplit.audio import ENCODINGS, Audio, decode, encode, probe
from musicsplit.errors import BadAudio, BadRequest
from musicsplit.validation import Limits, check_length, check_size

OUTPUT_FORMATS = ("fp32", *ENCODINGS)


@dataclass
class SeparationParams:
    stems: list[str] | None = None
    shifts: int = 1
    overlap: float = 0.25
    segment: float | None = None
    output_format: str = "fp32"


@dataclass
class ParsedRequest:
    audio: Audio
    params: SeparationParams
    encoded_bytes: int = 0


def parse_rest_request(body: bytes, json_length: str | None, model_name: str) -> InferRequest:
    """A v2 REST body, JSON or JSON + binary tensors, without copying the tensors.

    KServe's own parser turns binary tensors back into Python lists (slow for
    minutes of audio) and decodes binary BYTES as UTF-8 (fails on any audio
    file); this one keeps them as raw buffers that np.frombuffer reads.
    """
    if json_length is not None:
        try:
            header_len = int(json_length)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length {json_length!r} is not an integer") from None
        if not 0 < header_len <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {header_len} does not fit a {len(body)}-byte body")
    else:
        header_len = len(body)
    try:
        doc = orjson.loads(body[:header_len])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request is not valid v2 JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest('a v2 request needs an "inputs" list')
    if not isinstance(doc.get("parameters") or {}, dict):
        raise BadRequest('request "parameters" must be an object')
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                 for o in outputs):
        raise BadRequest('"outputs" must be a list of objects with a "name"')
    offset = header_len
    inputs = []
    for item in doc["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("parameters") or {}, dict):
            raise BadRequest('every input must be an object, its "parameters" an object')
        try:
            tensor = InferInput(name=item["name"], shape=list(item["shape"]), datatype=item["datatype"],
                                parameters=item.get("parameters"))
        except (KeyError, TypeError):
            raise BadRequest("every input needs name, shape and datatype") from None
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise BadRequest(f"input {item['name']!r}: binary_data_size must be a non-negative integer")
        if "data" in item:
            tensor.data = item["data"]
        elif size is not None:
            if offset + int(size) > len(body):
                raise BadRequest(f"input {item['name']!r} claims {size} bytes, the body holds {len(body) - offset}")
            tensor._raw_data = memoryview(body)[offset:offset + int(size)]
            offset += int(size)
        else:
            raise BadRequest(f"input {item['name']!r} has neither data nor binary_data_size")
        inputs.append(tensor)
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in outputs]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=doc.get("id"),
                        parameters=doc.get("parameters"), request_outputs=outputs or None)


def _params(request: InferRequest) -> dict:
    merged: dict = {}
    for source in (request.parameters, *(i.parameters for i in request.inputs)):
        if source:
            merged.update(to_http_parameters(source) if not isinstance(source, dict) else source)
    return merged


def _number(params: dict, key: str, kind, default, low, high):
    if key not in params or params[key] in (None, ""):
        return default
    try:
        value = kind(params[key])
    except (TypeError, ValueError):
        raise BadRequest(f"parameter {key}={params[key]!r} is not a {kind.__name__}") from None
    if not (low <= value <= high):
        raise BadRequest(f"parameter {key}={value} is out of range [{low}, {high}]")
    return value


def parse_params(params: dict, requested_outputs: list[str] | None = None) -> SeparationParams:
    stems = params.get("stems") or requested_outputs or None
    if isinstance(stems, str):
        stems = [s.strip() for s in stems.split(",") if s.strip()]
    elif stems is not None and not (isinstance(stems, list) and all(isinstance(s, str) for s in stems)):
        raise BadRequest(f"parameter stems={stems!r}: use a comma-separated string such as 'vocals,drums'")
    fmt = str(params.get("output_format") or "fp32").lower()
    if fmt not in OUTPUT_FORMATS:
        raise BadRequest(f"output_format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
    return SeparationParams(
        stems=list(stems) if stems else None,
        shifts=_number(params, "shifts", int, 1, 0, 10),
        overlap=_number(params, "overlap", float, 0.25, 0.0, 0.9),
        segment=_number(params, "segment", float, None, 1.0, 600.0),
        output_format=fmt,
    )


def _bytes_element(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        # JSON cannot carry raw bytes: a BYTES element sent as JSON is base64.
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadAudio(
                "BYTES input sent as JSON must be base64 text; or send the file with the "
                "binary tensor extension (Inference-Header-Content-Length)"
            ) from None
    raise BadAudio(f"BYTES input element has unexpected type {type(value).__name__}")


def parse_request(request: InferRequest, limits: Limits) -> ParsedRequest:
    """Turn a v2 request into audio + parameters, or raise a 400 naming the problem."""
    names = [i.name for i in request.inputs]
    tensor = next((i for i in request.inputs if i.name == "audio"), None)
    if tensor is None:
        raise BadRequest(f"no input named 'audio' (got {names}); send the waveform or file as 'audio'")
    requested = [o.name for o in (request.request_outputs or [])] or None
    params = _params(request)
    sep_params = parse_params(params, requested)
    try:
        data = tensor.as_numpy()
    except Exception as exc:  # kserve raises assorted errors for malformed tensors
        raise BadAudio(f"input 'audio' could not be read as {tensor.datatype} {tensor.shape}: {exc}") from None
    if tensor.datatype == "BYTES":
        if data.size != 1:
            raise BadAudio(f"BYTES input 'audio' must hold exactly one encoded file, got {data.size}")
        raw = _bytes_element(data.reshape(-1)[0])
        check_size(len(raw), limits)
        frames, rate = probe(raw)
        if frames > 0 and rate > 0:  # a small compressed file can decode to gigabytes: check first
            check_length(frames, rate, limits)
        return ParsedRequest(decode(raw), sep_params, encoded_bytes=len(raw))
    if tensor.datatype not in ("FP32", "FP64"):
        raise BadAudio(f"input 'audio' must be FP32 [channels, samples] or BYTES [1], got {tensor.datatype}")
    rate = params.get("sample_rate")
    if rate in (None, ""):
        raise BadRequest("FP32 input needs a 'sample_rate' parameter (e.g. 44100)")
    try:
        rate = int(rate)
    except (TypeError, ValueError):
        raise BadRequest(f"sample_rate {rate!r} is not an integer") from None
    if data.ndim == 1:
        data = data[None, :]
    elif data.ndim != 2:
        raise BadAudio(f"input 'audio' must be [channels, samples], got shape {list(data.shape)}")
    if data.size == 0:
        raise BadAudio("the audio is empty (no samples)")
    if data.shape[0] > data.shape[1]:
        raise BadAudio(
            f"input 'audio' has shape {list(data.shape)}: more channels than samples; "
            "send [channels, samples], not [samples, channels]"
        )
    return ParsedRequest(Audio(np.ascontiguousarray(data, dtype=np.float32), rate), sep_params)


def check_stems(wanted: list[str] | None, sources: list[str]) -> None:
    """Refuse stems the model cannot give, before any inference runs."""
    for name in wanted or []:
        if name not in sources and name.removeprefix("no_") not in sources:
            choices = sources + [f"no_{s}" for s in sources]
            raise BadRequest(f"unknown stem {name!r}; this model has {choices}")


def select_stems(stems: np.ndarray, sources: list[str], wanted: list[str] | None) -> dict[str, np.ndarray]:
    """Pick stems by name; `no_<stem>` is everything but that stem (karaoke tracks)."""
    by_name = dict(zip(sources, stems))
    if not wanted:
        return by_name
    check_stems(wanted, sources)
    return {name: by_name[name] if name in by_name else sum(v for k, v in by_name.items() if k != name[3:])
            for name in wanted}


def _scalar(value, grpc: bool):
    # gRPC InferParameter has no float field: send floats as decimal strings there.
    if grpc and isinstance(value, float):
        return repr(round(value, 6))
    return value


def build_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    stems: dict[str, np.ndarray],
    sample_rate: int,
    output_format: str,
    parameters: dict,
) -> InferResponse:
    # KServe serialises all outputs one way: binary if the request or any
    # requested output asks for it (v2 clients read either form per output).
    binary = bool(request.from_grpc or request.use_binary_outputs
                  or any(o.binary_data for o in request.request_outputs or []))
    outputs = []
    for name, wav in stems.items():
        if output_format == "fp32":
            out = InferOutput(name=name, shape=list(wav.shape), datatype="FP32")
            out.set_data_from_numpy(np.ascontiguousarray(wav, dtype=np.float32), binary_data=binary)
        else:
            blob = encode(wav, sample_rate, output_format)
            out = InferOutput(name=name, shape=[1], datatype="BYTES", parameters={"content_type": f"audio/{output_format}"})
            if binary:
                out.set_data_from_numpy(np.array([blob], dtype=object), binary_data=True)
            else:
                out.data = [base64.b64encode(blob).decode("ascii")]
                out.parameters["content_encoding"] = "base64"
        outputs.append(out)
    params = {k: _scalar(v, request.from_grpc) for k, v in parameters.items() if v is not None}
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        model_version=model_version,
        infer_outputs=outputs,
        parameters=params,
        use_binary_outputs=binary,
        from_grpc=request.from_grpc,
    )

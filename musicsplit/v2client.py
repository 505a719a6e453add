"""KServe v2 (Open Inference Protocol) HTTP client for separation predictors.

Used by the CLI, the gateway and the operator's probe. Binary tensor data
extension both ways by default: the request body is a JSON header followed
by the raw tensor bytes (`Inference-Header-Content-Length` says where the
JSON ends, each input's `binary_data_size` how many bytes are its own),
FP32 little-endian, BYTES as 4-byte little-endian length-prefixed elements.
Plain JSON (numbers; BYTES as base64 text) is there for clients and proxies
that cannot do binary. Connection errors are httpx's: callers add retries.
"""

from __future__ import annotations

import base64
import email.utils
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import numpy as np
import orjson

from musicsplit.audio import decode
from musicsplit.validation import split_warnings

JSON_LENGTH_HEADER = "Inference-Header-Content-Length"
# Who sends a request: the predictor labels its metrics `source` with it, and
# canary analysis counts users only. No header is a user.
SOURCE_HEADER = "X-Musicsplit-Source"
SOURCES = ("probe", "shadow")
# Numeric v2 datatypes a stem may come back as; all are returned as float32.
NUMERIC = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT16": "<i2", "INT32": "<i4"}


class V2Error(Exception):
    """The server answered with a non-2xx status; `message` is its `error` text."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, code: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.code = code


@dataclass
class Separation:
    """Stems as float32 [channels, samples] (zero-copy, read-only views for binary FP32)."""

    stems: dict[str, np.ndarray]
    sample_rate: int | None
    parameters: dict = field(default_factory=dict)
    encoded: dict[str, bytes] = field(default_factory=dict)  # the wav/flac bytes when asked for
    model_name: str | None = None

    @property
    def model_version(self) -> str | None:
        return self.parameters.get("model_version")

    @property
    def quality_score(self) -> float | None:
        value = self.parameters.get("quality_score")
        return None if value is None else float(value)

    @property
    def warnings(self) -> list[str]:
        return split_warnings(str(self.parameters.get("warnings") or ""))


def encode_request(
    samples: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    encoded: bytes | None = None,
    stems: list[str] | str | None = None,
    shifts: int | None = None,
    overlap: float | None = None,
    segment: float | None = None,
    output_format: str = "fp32",
    binary: bool = True,
) -> tuple[bytes, dict[str, str]]:
    """A v2 infer request body and its headers, for a waveform or an encoded file."""
    if (samples is None) == (encoded is None):
        raise ValueError("pass either samples (with sample_rate) or encoded file bytes")
    params: dict = {"output_format": output_format}
    if isinstance(stems, (list, tuple)):
        stems = ",".join(stems)
    for key, value in (("stems", stems), ("shifts", shifts), ("overlap", overlap), ("segment", segment)):
        if value is not None:
            params[key] = value
    if samples is not None:
        if sample_rate is None:
            raise ValueError("a waveform needs its sample_rate")
        wav = np.asarray(samples, dtype="<f4")
        wav = wav[None] if wav.ndim == 1 else wav
        params["sample_rate"] = int(sample_rate)
        tensor = {"name": "audio", "shape": list(wav.shape), "datatype": "FP32"}
        raw = np.ascontiguousarray(wav).tobytes() if binary else None
        if not binary:
            tensor["data"] = wav.ravel()
    else:
        tensor = {"name": "audio", "shape": [1], "datatype": "BYTES"}
        raw = struct.pack("<I", len(encoded)) + bytes(encoded) if binary else None
        if not binary:
            tensor["data"] = [base64.b64encode(encoded).decode("ascii")]
            tensor["parameters"] = {"content_encoding": "base64"}
    if binary:
        params["binary_data_output"] = True
        tensor["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps({"inputs": [tensor], "parameters": params}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + raw, {"Content-Type": "application/octet-stream", JSON_LENGTH_HEADER: str(len(header))}


def _bytes_elements(raw: bytes | memoryview) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        out.append(bytes(raw[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return out


def decode_response(body: bytes, headers: httpx.Headers | dict) -> Separation:
    """Parse a v2 infer response (JSON, or JSON + binary outputs) into a Separation."""
    json_length = headers.get(JSON_LENGTH_HEADER) or headers.get(JSON_LENGTH_HEADER.lower())
    header_len = int(json_length) if json_length is not None else len(body)
    view = memoryview(body)
    doc = orjson.loads(view[:header_len])
    params = dict(doc.get("parameters") or {})
    params.setdefault("model_version", doc.get("model_version"))
    offset = header_len
    stems: dict[str, np.ndarray] = {}
    encoded: dict[str, bytes] = {}
    rate = params.get("sample_rate")
    for out in doc.get("outputs") or []:
        name, dtype, shape = out["name"], out["datatype"], out["shape"]
        out_params = out.get("parameters") or {}
        size = out_params.get("binary_data_size")
        raw = None
        if size is not None:
            raw = view[offset:offset + int(size)]
            offset += int(size)
        if dtype == "BYTES":
            if raw is not None:
                blob = _bytes_elements(raw)[0]
            elif out_params.get("content_encoding") == "base64":
                blob = base64.b64decode(out["data"][0])
            else:
                blob = str(out["data"][0]).encode("utf-8")
            audio = decode(blob)
            encoded[name] = blob
            stems[name] = audio.samples
            rate = rate or audio.sample_rate
        elif dtype in NUMERIC:
            if raw is not None:
                arr = np.frombuffer(raw, dtype=NUMERIC[dtype]).reshape(shape)
            else:
                arr = np.asarray(out["data"], dtype=NUMERIC[dtype]).reshape(shape)
            stems[name] = arr if arr.dtype == np.float32 else arr.astype(np.float32)
        else:
            raise ValueError(f"output {name!r} has datatype {dtype}, not audio (FP32 or BYTES)")
    return Separation(stems, int(rate) if rate is not None else None, params, encoded, doc.get("model_name"))


def release(response: httpx.Response) -> httpx.Response:
    """Unbind a read response from httpx's stream wrapper, which points back at it.

    httpx 0.28 leaves Response <-> Bound(Async)Stream in a reference cycle
    (encode/httpx#3733), so a response and its body (megabytes of stems per
    call) outlive the caller until a full garbage collection: a gateway
    following jobs over WebSockets grew by the body of every chunk. With
    the cycle cut, the body is freed as soon as the caller drops it.
    """
    if response.is_closed:  # never cut an unread streaming body
        response.stream = httpx.ByteStream(b"")
    return response


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)  # the HTTP-date form
        return max(0.0, when.timestamp() - time.time()) if when else None


def raise_for_status(response: httpx.Response) -> None:
    """V2Error with the server's `{"error": ...}` message for any non-2xx answer."""
    if response.is_success:
        return
    message, code = response.text.strip() or response.reason_phrase, None
    try:
        doc = response.json()
        if isinstance(doc, dict) and doc.get("error"):
            message, code = str(doc["error"]), doc.get("code")
    except ValueError:
        pass
    try:
        retry = _retry_after(response.headers.get("retry-after"))
    except (TypeError, ValueError):
        retry = None
    raise V2Error(response.status_code, message, retry, code)


def _headers(request_headers: dict, extra: dict | None, source: str | None) -> dict:
    out = {**request_headers, **(extra or {})}
    if source is not None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)} (no source: a user), not {source!r}")
        out[SOURCE_HEADER] = source
    return out


def _model_path(model: str) -> str:
    return f"/v2/models/{quote(model, safe='')}"


class V2Client:
    """Blocking client; `transport` lets tests and in-process callers skip the network."""

    def __init__(self, base_url: str, *, timeout: float = 600.0, headers: dict | None = None,
                 transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, transport=transport)

    def live(self) -> bool:
        return self._http.get("/v2/health/live").status_code == 200

    def ready(self, model: str) -> bool:
        return self._http.get(f"{_model_path(model)}/ready").status_code == 200

    def metadata(self, model: str) -> dict:
        response = self._http.get(_model_path(model))
        raise_for_status(response)
        return response.json()

    def separate(self, model: str, samples: np.ndarray | None = None, sample_rate: int | None = None, *,
                 encoded: bytes | None = None, stems: list[str] | str | None = None, shifts: int | None = None,
                 overlap: float | None = None, segment: float | None = None, output_format: str = "fp32",
                 binary: bool = True, headers: dict | None = None, source: str | None = None) -> Separation:
        """Separate a waveform [channels, samples] or an encoded file (wav, flac, ogg, mp3).
        `source` marks a request that is not a user's (`probe`, `shadow`)."""
        body, request_headers = encode_request(
            samples, sample_rate, encoded=encoded, stems=stems, shifts=shifts, overlap=overlap,
            segment=segment, output_format=output_format, binary=binary)
        response = release(self._http.post(f"{_model_path(model)}/infer", content=body,
                                           headers=_headers(request_headers, headers, source)))
        raise_for_status(response)
        return decode_response(response.content, response.headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "V2Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncV2Client:
    """The asyncio twin of V2Client (same arguments, same results)."""

    def __init__(self, base_url: str, *, timeout: float = 600.0, headers: dict | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, transport=transport)

    async def live(self) -> bool:
        return (await self._http.get("/v2/health/live")).status_code == 200

    async def ready(self, model: str) -> bool:
        return (await self._http.get(f"{_model_path(model)}/ready")).status_code == 200

    async def metadata(self, model: str) -> dict:
        response = await self._http.get(_model_path(model))
        raise_for_status(response)
        return response.json()

    async def separate(self, model: str, samples: np.ndarray | None = None, sample_rate: int | None = None, *,
                       encoded: bytes | None = None, stems: list[str] | str | None = None,
                       shifts: int | None = None, overlap: float | None = None, segment: float | None = None,
                       output_format: str = "fp32", binary: bool = True,
                       headers: dict | None = None, source: str | None = None) -> Separation:
        body, request_headers = encode_request(
            samples, sample_rate, encoded=encoded, stems=stems, shifts=shifts, overlap=overlap,
            segment=segment, output_format=output_format, binary=binary)
        response = release(await self._http.post(f"{_model_path(model)}/infer", content=body,
                                                 headers=_headers(request_headers, headers, source)))
        raise_for_status(response)
        return decode_response(response.content, response.headers)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncV2Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

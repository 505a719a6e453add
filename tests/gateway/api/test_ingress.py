"""Bounded ingress: a body is counted while it streams, with or without Content-Length, and refused
with 413 as soon as it passes the limit, while the client is still sending; an oversize chunked
upload leaves the gateway's memory flat; credentials are checked before an upload is read; the v2
pass-through has a bound on requests in flight and streams its answers."""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from musicsplit.localstack import start_gateway, wait_until
from musicsplit.v2client import V2Client, encode_request

from tests.gateway.conftest import GatewayThread, bearer, make_settings, submit, tenants_file, tone, wav_bytes

MiB = 1024 * 1024
BOUNDARY = "----musicsplit-test-boundary"


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


class ChunkedUpload:
    """A raw HTTP/1.1 client sending a multipart upload with Transfer-Encoding: chunked (no
    Content-Length), checking for an answer after every chunk, as a streaming client would."""

    def __init__(self, url: str, path: str = "/v1/separations", headers: dict[str, str] | None = None,
                 content_type: str = f"multipart/form-data; boundary={BOUNDARY}", multipart: bool = True):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Transfer-Encoding: chunked",
                 f"Content-Type: {content_type}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.sent = 0
        self.answer = b""
        if multipart:
            self._chunk(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="huge.wav"\r\n'
                        "Content-Type: audio/wav\r\n\r\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
        self.sent += len(data)

    def _answered(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:
            data = self.sock.recv(65536)
            self.answer += data
            return True
        return False

    def send(self, total: int, chunk: int = MiB) -> None:
        """Send up to `total` bytes of body, stopping as soon as the server answers."""
        block = b"\0" * chunk
        try:
            while self.sent < total:
                self._chunk(block)
                if self._answered():
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + 10
        while not self._complete() and time.monotonic() < deadline:
            try:
                if not self._answered():
                    time.sleep(0.01)
            except ConnectionResetError:
                break

    def _complete(self) -> bool:
        """The head and as many body bytes as its Content-Length says (they may come in separate reads)."""
        head, sep, body = self.answer.partition(b"\r\n\r\n")
        if not sep:
            return False
        match = re.search(rb"^content-length:\s*(\d+)", head, re.I | re.M)
        return match is None or len(body) >= int(match.group(1))

    def response(self) -> tuple[int, dict]:
        head, _, body = self.answer.partition(b"\r\n\r\n")
        return status_of(head), json.loads(body) if body.startswith(b"{") else {}

    def close(self) -> None:
        self.sock.close()


def memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.mark.slow
def test_an_oversize_chunked_upload_is_refused_early_with_flat_memory(baseline, tmp_path, logs_dir):
    """The issue's case: 300 MiB without Content-Length, the default 200 MiB limit. Before, the gateway read
    it whole into memory (RSS 87 -> 395 MB) and only then said 413."""
    gw = start_gateway([("dsp-baseline", baseline.url)], data_dir=tmp_path / "gw", log_dir=logs_dir,
                       default_model="dsp-baseline")
    try:
        assert submit(gw.url, wav_bytes(tone(1.0, seed=801))).status_code == 202  # everything imported and warm
        pid = gw.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        before = memory(pid)
        limit = 200 * MiB
        upload = ChunkedUpload(gw.url)
        start = time.monotonic()
        upload.send(300 * MiB)
        elapsed = time.monotonic() - start
        status, body = upload.response()
        upload.close()
        after = memory(pid)
    finally:
        gw.stop()
    assert status == 413 and body["code"] == "payload_too_large", (status, body)
    assert "over the limit of 209715200 bytes" in body["error"]
    # Answered while the client was still sending: at the limit, plus what was in flight.
    assert limit < upload.sent < limit + 16 * MiB, upload.sent
    growth = after["VmHWM"] - before["VmRSS"]
    print(f"oversize chunked upload: sent {upload.sent / MiB:.0f} MiB, 413 after {elapsed:.1f} s, "
          f"peak RSS growth {growth / MiB:.1f} MiB (RSS before {before['VmRSS'] / MiB:.0f} MiB)")
    assert growth < 40 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB"
    assert not list((tmp_path / "gw" / "staging").glob("*")), "the refused upload's staged part is deleted"


@pytest.fixture(scope="module")
def gw(baseline_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-ingress")
    keys = tenants_file(tmp / "tenants.yaml", {"acme": {}}, {"acme": "acme-ingress-key"})
    gateway = GatewayThread(make_settings(tmp, [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys,
                                          max_request_bytes=4 * MiB, v2_max_concurrent=1)).start()
    yield gateway
    gateway.stop()


KEY = bearer("acme-ingress-key")


def test_an_upload_is_not_read_before_its_credentials_are_checked(gw):
    upload = ChunkedUpload(gw.url)  # no Authorization
    upload.send(64 * MiB)
    status, body = upload.response()
    upload.close()
    assert status == 401 and body["code"] == "unauthorized"
    assert upload.sent < 8 * MiB, f"the server read {upload.sent / MiB:.0f} MiB of an unauthenticated upload"
    assert b"connection: close" in upload.answer.lower()


@pytest.mark.parametrize("route,multipart", [("/v1/separations", True), ("/v2/models/default/infer", False)])
def test_a_chunked_body_over_the_limit_is_a_413_on_every_route(gw, route, multipart):
    upload = ChunkedUpload(gw.url, route, KEY, content_type=f"multipart/form-data; boundary={BOUNDARY}"
                           if multipart else "application/octet-stream", multipart=multipart)
    upload.send(64 * MiB, chunk=256 * 1024)
    status, body = upload.response()
    upload.close()
    assert status == 413 and body["code"] == "payload_too_large" and "over the limit" in body["error"], body
    assert upload.sent < 4 * MiB + 8 * MiB, upload.sent


def test_a_content_length_over_the_limit_is_refused_unread(gw):
    r = httpx.post(f"{gw.url}/v1/separations", content=b"\0" * (6 * MiB),
                   headers={**KEY, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}, timeout=30)
    assert r.status_code == 413 and r.json() == {
        "error": f"request is {6 * MiB} bytes, over the limit of {5 * MiB} bytes; split the track or use the "
                 "gateway's chunked jobs", "code": "payload_too_large"}


@pytest.mark.parametrize("form,fragment", [
    ({"stems": "x" * 9000}, "form field 'stems' is longer than 8192 bytes"),
    ({"shifts": "eleven"}, "shifts: Input should be a valid integer"),
    ({"shifts": "11"}, "shifts: Input should be less than or equal to 10"),
])
def test_bad_form_fields_are_a_400_that_names_them(gw, form, fragment):
    r = httpx.post(f"{gw.url}/v1/separations", files={"file": ("a.wav", wav_bytes(tone(1.0)))}, data=form,
                   headers=KEY, timeout=30)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def _part(name: str, value: bytes, *headers: str) -> bytes:
    lines = [f"--{BOUNDARY}", f'Content-Disposition: form-data; name="{name}"', *headers, "", ""]
    return "\r\n".join(lines).encode() + value + b"\r\n"


@pytest.mark.parametrize("parts,fragment", [
    # One name repeated: every part counts (a name count let 200,000 of them through).
    ([_part("stems", b"vocals")] * 17, "parts in the form; send the file(s) and at most 16 fields"),
    ([_part("model", b"default", *(f"X-Pad-{i}: 1" for i in range(8)))], "Maximum header count exceeded (at most 8 headers per part"),
    ([_part(f"f{i}", b"1", f"X-Pad: {'p' * 4000}") for i in range(5)], "longer than 16384 bytes in all"),
])
def test_form_parts_their_headers_and_header_bytes_are_bounded(gw, parts, fragment):
    audio = _part("file", wav_bytes(tone(0.5)), "Content-Type: audio/wav").replace(
        b'name="file"', b'name="file"; filename="a.wav"')
    body = audio + b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    r = httpx.post(f"{gw.url}/v1/separations", content=body, timeout=30,
                   headers={**KEY, "content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == 400 and fragment in r.json()["error"], r.text
    assert not list((gw.settings.data_dir / "staging").glob("*")), "the staged file was deleted"


def test_the_v2_pass_through_bounds_requests_in_flight_and_streams_answers(gw):
    mix = tone(2.0, seed=802)
    body, headers = encode_request(mix, 44100)
    release = threading.Event()
    answers = {}

    def held():  # the body arrives slowly: the request holds its place meanwhile
        yield body[:1024]
        release.wait(30)
        yield body[1024:]

    def first():
        answers["first"] = httpx.post(f"{gw.url}/v2/models/default/infer", content=held(),
                                      headers={**headers, **KEY}, timeout=60)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_until(lambda: gw.service.v2_slots.free == 0, 20, "the first request in flight")
        r = httpx.post(f"{gw.url}/v2/models/default/infer", content=body, headers={**headers, **KEY}, timeout=60)
        assert r.status_code == 429 and r.json()["code"] == "saturated" and r.headers["retry-after"], r.text
    finally:
        release.set()
        thread.join(60)
    assert answers["first"].status_code == 200, answers["first"].text
    assert answers["first"].headers["x-musicsplit-model-version"] != "unknown"
    wait_until(lambda: gw.service.v2_slots.free == 1, 10, "its place freed")
    with V2Client(gw.url, headers=KEY) as client:  # a binary answer streamed through: whole and intact
        sep = client.separate("default", mix, 44100)
    np.testing.assert_allclose(sum(sep.stems.values()), mix, atol=1e-4)
    assert sep.model_version


def multipart_body(audio: bytes) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode() + audio + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_retryable_refusal_is_read_by_the_client_on_a_connection_that_stays_open(baseline_url, tmp_path):
    """A quota's 429 comes before the upload is read; clients that write the whole body before reading
    (k6, Go, httpx) saw a broken pipe instead of the 429 when the server closed under them. The rest of the
    body is read and dropped, the 429 arrives whole, and the connection serves the next request."""
    # A tenant name of its own: the metrics registry is the process's, shared with other tests.
    keys = tenants_file(tmp_path / "tenants.yaml", {"one-a-minute": {"quota": {"requests_per_minute": 1}}},
                        {"one-a-minute": "one-a-minute-key"})
    gateway = GatewayThread(make_settings(tmp_path, [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys,
                                          max_request_bytes=8 * MiB)).start()
    try:
        auth = bearer("one-a-minute-key")
        while time.time() % 60 > 40:  # the accepted and the refused request in one quota minute
            time.sleep(0.5)
        assert submit(gateway.url, wav_bytes(tone(1.0)), headers=auth).status_code == 202  # the minute's one
        body = multipart_body(b"\0" * (3 * MiB))
        r = httpx.post(f"{gateway.url}/v1/separations", content=body, timeout=30,
                       headers={**auth, "content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert r.status_code == 429 and r.json()["code"] == "quota_exceeded" and int(r.headers["retry-after"]) >= 1

        host, port = gateway.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = (f"POST /v1/separations HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth['Authorization']}\r\n"
                    f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
            sock.sendall(head.encode() + body)
            reader = sock.makefile("rb")
            status_line = reader.readline()
            headers = {}
            while (line := reader.readline().strip()):
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            reader.read(int(headers["content-length"]))
            assert status_of(status_line) == 429 and headers.get("connection") != "close", (status_line, headers)
            sock.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert status_of(reader.readline()) == 200, "the same connection serves the next request"
    finally:
        gateway.stop()


async def test_refusals_that_drain_their_bodies_are_bounded_in_number():
    """Past max_drains refusals reading the rest of their bodies at once, a refusal closes instead."""
    from musicsplit.gateway.api.ingress import BodyLimit

    async def refuse(scope, receive, send):
        await send({"type": "http.response.start", "status": 429, "headers": [(b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": b"{}"})

    limit = BodyLimit(refuse, max_bytes=MiB, max_drains=1)
    scope = {"type": "http", "headers": [(b"content-length", b"1000")]}
    stalled = asyncio.Event()  # the first client sends nothing of its body until the end of the test

    async def trickle():
        await stalled.wait()
        return {"type": "http.disconnect"}

    async def whole_body():
        return {"type": "http.request", "body": b"\0" * 1000, "more_body": False}

    answers: dict[str, list] = {"first": [], "second": []}

    def sender(name):
        async def send(message):
            answers[name].append(message)
        return send

    first = asyncio.create_task(limit(scope, trickle, sender("first")))
    async with asyncio.timeout(5):
        while limit.draining == 0:  # the first refusal is draining its body
            await asyncio.sleep(0.01)
    await limit(scope, whole_body, sender("second"))
    assert (b"connection", b"close") in answers["second"][0]["headers"], "not drained: closed"
    assert answers["first"] == [], "the first still drains"
    stalled.set()
    await first
    assert limit.draining == 0


def _answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.slow
def test_slow_clients_are_cut_off_with_408_and_a_tenants_uploads_are_capped(baseline_url, tmp_path):
    keys = tenants_file(tmp_path / "tenants.yaml", {"slow": {}}, {"slow": "slow-tenant-key"})
    with GatewayThread(make_settings(tmp_path, [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys,
                                     header_timeout_s=1.0, body_timeout_s=1.0, max_uploads_per_tenant=1)) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        auth = bearer("slow-tenant-key")
        # Headers trickled, never finished.
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"POST /v1/separations HTTP/1.1\r\nHost: {host}\r\n".encode())
            answer = _answer(sock)
        assert status_of(answer) == 408 and b"headers did not arrive within 1 s" in answer, answer
        # A body that stops half way: 408 once it has been silent for body_timeout_s.
        body = multipart_body(wav_bytes(tone(1.0)))
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall((f"POST /v1/separations HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth['Authorization']}"
                          f"\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:1000])
            answer = _answer(sock)
        assert status_of(answer) == 408 and b"request_timeout" in answer and b"connection: close" in answer.lower()
        # While one upload of the tenant streams (stalled here), its next one is refused, not queued.
        slow = ChunkedUpload(gw.url, headers=auth)
        try:
            wait_until(lambda: gw.service.upload_slots.held.get("slow") == 1, 10, "the first upload in progress")
            r = submit(gw.url, wav_bytes(tone(1.0)), headers=auth)
            assert r.status_code == 429 and "uploads in progress" in r.json()["error"], r.text
            assert int(r.headers["retry-after"]) >= 1
        finally:
            slow.close()
        wait_until(lambda: "slow" not in gw.service.upload_slots.held, 10, "the stalled upload's slot back")
        assert submit(gw.url, wav_bytes(tone(1.0)), headers=auth).status_code == 202

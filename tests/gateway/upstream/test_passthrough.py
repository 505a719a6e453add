"""The v2 pass-through as a service (upstream/passthrough.py PassThrough), called as the route calls it:
every place it takes (the replica's v2 place, the tenant's upload place) comes back whichever way a request
ends. A real service (SQLite job store, the pool's probes) in the test's event loop, real predictors."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import pytest_asyncio
from starlette.requests import ClientDisconnect

from musicsplit.errors import MusicsplitError, UpstreamUnavailable
from musicsplit.gateway.service import SeparationService
from musicsplit.gateway.tenancy.callers import Caller
from musicsplit.v2client import decode_response, encode_request

from tests.gateway.conftest import make_settings, tone, wav_bytes

WHO = Caller("acme", "u1")


@pytest_asyncio.fixture(loop_scope="function")  # the tests' own loop: the services live in it
async def service_factory(tmp_path):
    """Start services on demand (in this test's event loop); all stopped at the end of the test."""
    started: list[SeparationService] = []

    async def start(endpoints, **overrides) -> SeparationService:
        service = SeparationService(make_settings(tmp_path / f"svc{len(started)}", endpoints, **overrides))
        await service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        await service.stop()


@pytest.fixture
def cut_off_predictor():
    """A predictor that is ready, and answers an infer with the start of a chunked answer, then drops the
    connection (a replica that dies mid-answer)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            data = b'{"name": "dsp-baseline", "ready": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def sent(body: bytes, block: int = 64 * 1024, *, then: BaseException | None = None):
    """A request body as the route hands it over (request.stream()), in blocks; `then` raised after the first."""
    for i in range(0, len(body), block):
        yield body[i:i + block]
        if then is not None:
            raise then


def all_back(service: SeparationService) -> bool:
    return service.v2_slots.free == service.v2_slots.size and not service.upload_slots.held


async def test_an_answer_streams_whole_and_gives_its_place_back_at_the_end(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")])
    mix = tone(1.0)
    body, headers = encode_request(mix, 44100)
    answer = await service.passthrough.infer("default", WHO, sent(body), headers)
    assert answer.status == 200
    assert answer.headers["X-Musicsplit-Model"] == "dsp-baseline" and answer.headers["X-Musicsplit-Arm"]
    assert answer.headers["X-Musicsplit-Model-Version"] not in ("", "unknown")
    assert "X-Musicsplit-Fallback" not in answer.headers
    # While the answer streams, the request holds its v2 place; its upload place came back once spooled.
    assert service.v2_slots.free == service.v2_slots.size - 1 and not service.upload_slots.held
    data = b"".join([chunk async for chunk in answer.body])
    assert all_back(service)
    sep = decode_response(data, answer.headers)
    np.testing.assert_allclose(sum(sep.stems.values()), mix, atol=1e-4)
    service.v2_slots.take()  # another request's place: the response's own release must not give it back
    await answer.release()
    assert service.v2_slots.free == service.v2_slots.size - 1


async def test_a_client_gone_mid_stream_gives_every_place_back(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")])
    body, headers = encode_request(encoded=wav_bytes(tone(2.0)))
    answer = await service.passthrough.infer("default", WHO, sent(body), headers)
    first = await anext(answer.body)
    assert first and not all_back(service)
    await answer.body.aclose()  # what the server does with the stream of a client that left
    assert all_back(service)
    service.v2_slots.take()
    await answer.release()  # the response's background task runs too: nothing given twice
    assert service.v2_slots.free == service.v2_slots.size - 1


async def test_a_client_gone_before_the_stream_started_gives_its_place_back(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")])
    body, headers = encode_request(encoded=wav_bytes(tone(0.5)))
    answer = await service.passthrough.infer("default", WHO, sent(body), headers)
    assert not all_back(service)
    await answer.release()  # only the background task runs: the body was never iterated
    assert all_back(service)


async def test_a_client_gone_mid_upload_gives_both_places_back(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")])
    body, headers = encode_request(encoded=wav_bytes(tone(2.0)))
    with pytest.raises(ClientDisconnect):
        await service.passthrough.infer("default", WHO, sent(body, then=ClientDisconnect()), headers)
    assert all_back(service)


async def test_an_upload_over_the_limit_is_refused_and_gives_both_places_back(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")], max_request_bytes=1024 * 1024)
    body, headers = encode_request(encoded=wav_bytes(tone(8.0)))  # 5.6 MB of float WAV
    with pytest.raises(MusicsplitError) as refused:
        await service.passthrough.infer("default", WHO, sent(body), headers)
    assert refused.value.status == 413
    assert all_back(service)


async def test_an_upstream_that_fails_gives_every_place_back(service_factory):
    dead = "http://127.0.0.1:9"  # nothing listens there
    service = await service_factory([("dsp-baseline", dead, "eu")], fallback_model=None)
    body, headers = encode_request(encoded=wav_bytes(tone(0.5)))
    with pytest.raises(UpstreamUnavailable):
        await service.passthrough.infer("default", WHO, sent(body), headers)
    assert all_back(service)


async def test_the_predictors_refusal_of_the_input_gives_every_place_back(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")])
    with pytest.raises(MusicsplitError) as refused:
        await service.passthrough.infer("default", WHO, sent(b'{"inputs": []}'),
                                        {"content-type": "application/json"})
    assert refused.value.status == 400 and "audio" in str(refused.value)
    assert all_back(service)


async def test_an_upstream_cut_off_mid_answer_gives_every_place_back(cut_off_predictor, service_factory):
    service = await service_factory([("dsp-baseline", cut_off_predictor, "eu")], fallback_model=None)
    body, headers = encode_request(encoded=wav_bytes(tone(0.5)))
    answer = await service.passthrough.infer("default", WHO, sent(body), headers)
    with pytest.raises(httpx.TransportError):  # the client sees its answer end early
        async for _ in answer.body:
            pass
    assert all_back(service)


async def test_the_fallback_model_answers_and_says_so(baseline_url, service_factory):
    service = await service_factory([("htdemucs", "http://127.0.0.1:9", "eu"), ("dsp-baseline", baseline_url, "eu")],
                                    default_model="htdemucs", fallback_model="dsp-baseline")
    body, headers = encode_request(encoded=wav_bytes(tone(0.5)))
    answer = await service.passthrough.infer("default", WHO, sent(body), headers)
    try:
        assert answer.headers["X-Musicsplit-Model"] == "dsp-baseline"
        assert answer.headers["X-Musicsplit-Fallback"] == "htdemucs unavailable"
        assert set(decode_response(b"".join([c async for c in answer.body]), answer.headers).stems) == {
            "drums", "bass", "other", "vocals"}
    finally:
        await answer.release()
    assert all_back(service)


async def test_ready_and_metadata_name_the_model_the_alias_resolves_to(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")], aliases={"fast": "dsp-baseline"})
    assert service.passthrough.ready("fast", WHO) == "dsp-baseline"
    meta = await service.passthrough.metadata("fast", WHO)
    assert meta.status == 200 and meta.headers["X-Musicsplit-Model"] == "dsp-baseline"
    assert b'"vocals"' in meta.content


async def test_a_version_pinned_call_is_answered_by_that_version_and_gives_its_place_back(baseline_url,
                                                                                          service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")])
    body, headers = encode_request(tone(0.5), 44100)
    probe = await service.passthrough.infer("default", WHO, sent(body), headers)
    version = probe.headers["X-Musicsplit-Model-Version"]
    await probe.release()
    mix = tone(1.0)
    body, headers = encode_request(mix, 44100)
    answer = await service.passthrough.infer_version("default", WHO, version, sent(body), headers)
    assert (answer.status, answer.headers["X-Musicsplit-Model-Version"]) == (200, version)
    sep = decode_response(b"".join([chunk async for chunk in answer.body]), answer.headers)
    np.testing.assert_allclose(sum(sep.stems.values()), mix, atol=1e-4)
    assert all_back(service)


async def test_a_version_no_endpoint_serves_is_a_409_and_gives_every_place_back(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")])
    body, headers = encode_request(tone(0.5), 44100)
    with pytest.raises(MusicsplitError) as refused:
        await service.passthrough.infer_version("default", WHO, "no-such-version", sent(body), headers)
    assert refused.value.status == 409 and "no-such-version" in str(refused.value)
    assert all_back(service)


async def test_a_version_pinned_upload_holds_the_tenants_upload_place(baseline_url, service_factory):
    service = await service_factory([("dsp-baseline", baseline_url, "eu")], max_uploads_per_tenant=1)
    body, headers = encode_request(tone(0.5), 44100)
    with service.upload_slots.hold(WHO.tenant):  # the tenant's one upload place is taken
        with pytest.raises(MusicsplitError) as refused:
            await service.passthrough.infer_version("default", WHO, "any", sent(body), headers)
    assert refused.value.status == 429
    assert all_back(service)

"""The v2 pass-through (`PassThrough`) and its memory bounds: requests in flight, bodies spooled, answers
streamed.

A v2 request may carry up to the body limit (200 MiB) and its answer several
times that (one FP32 tensor per stem). So: at most `v2_max_concurrent`
requests per replica are in flight (429 beyond, never a queue); a body is
spooled (memory up to a few MiB, then a file in the staging area) so that a
retry on another endpoint can send it again; and the answer streams to the
client. Only the answer's JSON part is read here, for the model version,
quality and audio seconds the gateway reports: a binary answer's JSON header
(Inference-Header-Content-Length), or a JSON answer up to
`v2_max_parsed_response_bytes` (a bigger one streams unread).

`PassThrough` is the flow itself, what a v2 route calls (api/routers/v2.py):
quota, alias, place, spooled body, forwarding (retries, breakers, fallback:
routing.py), the answer's head, observations, audio accounting, the shadow
mirror's hand-off, and an answer to stream whose `release` gives every place
back, whichever way the response ends.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterable, AsyncIterator, Awaitable, BinaryIO, Callable, Mapping

import httpx

from musicsplit.errors import MusicsplitError, NotReady, PayloadTooLarge, Saturated
from musicsplit.gateway import metrics
from musicsplit.gateway.api.ingress import too_large
from musicsplit.v2client import V2Error, decode_response

if TYPE_CHECKING:
    from musicsplit.gateway.experiments.flags import Choice, Flags
    from musicsplit.gateway.jobs.observations import Observations
    from musicsplit.gateway.settings import GatewaySettings
    from musicsplit.gateway.tenancy.callers import Caller
    from musicsplit.gateway.tenancy.quotas import Quotas, UploadSlots
    from musicsplit.gateway.upstream.routing import Routed, Router
    from musicsplit.gateway.upstream.shadow import ShadowMirror

SPOOL_IN_MEMORY = 1024 * 1024
BLOCK = 1024 * 1024
JSON_LENGTH = "inference-header-content-length"
FORWARDED = ("content-type", JSON_LENGTH)  # the request's and the answer's headers a v2 client relies on


class Slots:
    """Requests in flight; one event loop, so a counter suffices."""

    def __init__(self, size: int):
        self.size = size
        self.free = size

    def take(self) -> None:
        if self.free <= 0:
            metrics.REJECTED.labels(reason="v2_saturated").inc()
            raise Saturated(f"{self.size} v2 requests are in flight on this gateway; try again shortly",
                            retry_after=1)
        self.free -= 1

    def give(self) -> None:
        self.free = min(self.size, self.free + 1)


class SpooledBody:
    """A request body kept for retries: in memory up to a few MiB, then in a staging file."""

    def __init__(self, staging: Path):
        staging.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=staging)  # type: ignore
        self.length = 0

    async def fill(self, content: AsyncIterable[bytes], max_bytes: int) -> None:
        """Take a request's body (`request.stream()`); PayloadTooLarge as soon as it passes `max_bytes`."""
        buffer = bytearray()
        async for chunk in content:
            buffer.extend(chunk)
            if self.length + len(buffer) > max_bytes:
                metrics.REJECTED.labels(reason="payload_too_large").inc()
                raise PayloadTooLarge(too_large(self.length + len(buffer), max_bytes, so_far=True))
            if len(buffer) >= BLOCK:
                await asyncio.to_thread(self.file.write, bytes(buffer))
                self.length += len(buffer)
                buffer.clear()
        self.file.write(bytes(buffer))
        self.length += len(buffer)

    async def append(self, chunk: bytes) -> None:
        """Add bytes at the end (an answer kept as it streams by)."""
        self.file.seek(0, 2)
        await asyncio.to_thread(self.file.write, chunk)
        self.length += len(chunk)

    def read_all(self) -> bytes:
        """The whole body, in memory (blocking: call it in a thread)."""
        return _read_at(self.file, 0, self.length)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body from the start (every try gets its own iterator)."""
        offset = 0
        while offset < self.length:
            block = await asyncio.to_thread(_read_at, self.file, offset, BLOCK)
            if not block:
                break
            offset += len(block)
            yield block

    def close(self) -> None:
        self.file.close()


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


@dataclass
class Head:
    """What was read of an answer before streaming it on: its bytes so far and its parameters."""

    data: bytes
    parameters: dict


async def read_head(response: httpx.Response, chunks: AsyncIterator[bytes], max_parsed: int) -> Head:
    """Read the answer's JSON part, only as far as needed, and parse its `parameters`; an answer of
    unknown length, or whose JSON is over `max_parsed`, is not read at all."""
    binary = response.headers.get(JSON_LENGTH, "")
    length = response.headers.get("content-length", "")
    want = int(binary) if binary.isdigit() else int(length) if length.isdigit() else None
    if want is None or want > max_parsed:
        return Head(b"", {})
    data = bytearray()
    async for chunk in chunks:
        data.extend(chunk)
        if len(data) >= want:
            break
    try:
        parameters = json.loads(bytes(data[:want])).get("parameters", {}) or {}
    except (ValueError, AttributeError):
        parameters = {}
    return Head(bytes(data), parameters)


@dataclass
class V2Answer:
    """A predictor's answer, ready to stream to the client. `body` gives the places back when it ends or is
    closed; `release()` does so too (idempotent) and must run once the response is over, sent or not: a
    client gone before the stream started never runs `body`."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    release: Callable[[], Awaitable[None]]


@dataclass
class V2Metadata:
    """A model's v2 metadata as its predictor answered it, and which model and arm that was."""

    status: int
    content: bytes
    headers: dict[str, str]


class PassThrough:
    """The v2 pass-through: what `/v2/models/{name}[/ready|/infer]` do for an authenticated caller.

    `resolve` is the service's alias resolution (SeparationService.resolve); `slots` and `uploads` are the
    replica's v2 places and the per-tenant upload places, shared with the rest of the gateway."""

    def __init__(self, settings: GatewaySettings, router: Router, quotas: Quotas, observations: Observations,
                 shadow: ShadowMirror, flags: Flags, resolve: Callable[[str, Caller], Choice], *, slots: Slots,
                 uploads: UploadSlots):
        self.settings = settings
        self.max_bytes = settings.limits().max_bytes
        self.router, self.quotas, self.observations, self.shadow = router, quotas, observations, shadow
        self.flags, self.resolve, self.slots, self.uploads = flags, resolve, slots, uploads

    async def infer(self, name: str, caller: Caller, content: AsyncIterable[bytes],
                    headers: Mapping[str, str]) -> V2Answer:
        """The body (`content`, with the request's `headers`) to a healthy predictor of the model `name`
        resolves to, as sent (binary tensor extension included), with retries, circuit breakers, region
        failover and the fallback model. Counts the audio against the tenant's quota. On any error every
        place taken is given back before it is raised."""
        await self.quotas.audio_left(caller.tenant)
        choice = self.resolve(name, caller)
        self.slots.take()
        body: SpooledBody | None = None
        upstream: httpx.Response | None = None
        try:
            body = SpooledBody(self.settings.staging_dir)
            with self.uploads.hold(caller.tenant):
                await body.fill(content, self.max_bytes)
            fwd = {k: v for k, v in headers.items() if k.lower() in FORWARDED}
            start = time.perf_counter()
            try:
                routed = await self.router.forward(choice.model, "/infer", body.chunks, body.length, fwd,
                                                   fallback=self.flags.fallback_model(caller.flag_user))
            except MusicsplitError as exc:
                # Bad input says nothing about the arm.
                await self.observations.v2_failed(choice, bad_input=exc.status < 500 and exc.status != 429)
                raise
            upstream = routed.value
            chunks = upstream.aiter_bytes()
            head = await read_head(upstream, chunks, self.settings.v2_max_parsed_response_bytes)
            params = head.parameters
            version = str(params.get("model_version") or routed.endpoint.version or "unknown")
            seconds = _number(params.get("audio_seconds"))
            await self.observations.v2_succeeded(choice, routed.model, version,
                                                 _number(params.get("quality_score")),
                                                 time.perf_counter() - start, tenant=caller.tenant,
                                                 audio_seconds=seconds)
            await self.quotas.add_audio(caller.tenant, seconds or 0.0)
        except BaseException:
            if body is not None:
                body.close()
            if upstream is not None:
                await upstream.aclose()
            self.slots.give()
            raise
        return self._stream(routed, head, chunks, body, fwd, _answer_headers(upstream, routed, choice, version))

    def _stream(self, routed: Routed, head: Head, chunks: AsyncIterator[bytes], body: SpooledBody,
                fwd: dict[str, str], headers: dict[str, str]) -> V2Answer:
        upstream: httpx.Response = routed.value  # type: ignore[assignment]
        # The user's answer is ready: a sample of answers is mirrored to a canary once they have gone by.
        mirror = self.shadow.offer_v2(routed.model, head.parameters.get("model_version"), body.length)
        answer = SpooledBody(self.settings.staging_dir) if mirror else None
        if mirror is None:
            body.close()
        released = False

        async def release(sent: bool = False) -> None:  # idempotent: the stream's end, or the response's
            nonlocal released
            if released:
                return
            released = True
            await upstream.aclose()
            self.slots.give()
            if mirror is not None and answer is not None:
                if sent:  # the mirror owns the spooled request and answer from here
                    answer_headers = upstream.headers
                    mirror.send(lambda: (body.read_all(), fwd),
                                lambda: decode_response(answer.read_all(), answer_headers).stems,
                                answer.length, lambda: (body.close(), answer.close()))
                else:
                    mirror.abandon()
                    body.close()
                    answer.close()

        async def relay() -> AsyncIterator[bytes]:
            sent = False
            try:
                if head.data:
                    yield head.data
                    if answer is not None:
                        await answer.append(head.data)
                async for chunk in chunks:
                    yield chunk
                    if answer is not None:
                        await answer.append(chunk)
                sent = True
            finally:
                await release(sent)

        return V2Answer(upstream.status_code, headers, relay(), release)

    async def metadata(self, name: str, caller: Caller) -> V2Metadata:
        """The v2 metadata of the model `name` resolves to, from one of its endpoints (retried elsewhere)."""
        choice = self.resolve(name, caller)
        http = self.router.http

        async def one(state):
            r = await http.get(f"{state.url}/v2/models/{state.model}", timeout=10.0)
            if r.status_code >= 500:
                raise V2Error(r.status_code, r.text)
            return r

        routed = await self.router.call(choice.model, one)
        return V2Metadata(routed.value.status_code, routed.value.content,  # type: ignore[attr-defined]
                          {"X-Musicsplit-Model": routed.model, "X-Musicsplit-Arm": choice.arm})

    def ready(self, name: str, caller: Caller) -> str:
        """The model `name` resolves to, if some endpoint of it is healthy with its breaker closed;
        NotReady (503 with Retry-After) otherwise."""
        model = self.resolve(name, caller).model
        pool = self.router.pool
        if any(s.healthy and s.breaker.available() for s in pool.for_model(model)):
            return model
        raise NotReady(f"no endpoint of {model} is ready", retry_after=pool.retry_after(model) or 5)


def _answer_headers(upstream: httpx.Response, routed: Routed, choice: Choice, version: str) -> dict[str, str]:
    """The answer's v2 headers, and which model, version and arm served it."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in FORWARDED}
    if "content-encoding" not in upstream.headers and "content-length" in upstream.headers:
        headers["content-length"] = upstream.headers["content-length"]
    headers.update({"X-Musicsplit-Model": routed.model, "X-Musicsplit-Model-Version": version,
                    "X-Musicsplit-Arm": choice.arm})
    if routed.fallback:
        headers["X-Musicsplit-Fallback"] = f"{choice.model} unavailable"
    return headers


def _number(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None

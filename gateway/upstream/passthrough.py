"""The v2 pass-through (`PassThrough`): what a v2 route calls (api/routers/v2.py, and the page's
version-pinned call in api/routers/ui.py).

`infer`: quota, alias, place, spooled body (spooling.py), forwarding
(retries, breakers, fallback: routing.py), the answer's head, observations,
audio accounting, the shadow mirror's hand-off, and an answer to stream
whose `release` gives every place back, whichever way the response ends.
`infer_version`: the same, answered by one version of the model only (a
rollout's canary at its own URL, else the endpoints last seen serving it),
never mirrored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping

import httpx

from musicsplit.errors import Conflict, MusicsplitError, NotReady, UpstreamUnavailable
from musicsplit.gateway.upstream.resilience import is_client_fault
from musicsplit.gateway.upstream.routing import client_error, post_streamed
from musicsplit.gateway.upstream.spooling import FORWARDED, Head, Slots, SpooledBody, read_head
from musicsplit.v2client import V2Error, decode_response

if TYPE_CHECKING:
    from musicsplit.gateway.experiments.flags import Choice, Flags
    from musicsplit.gateway.jobs.observations import Observations
    from musicsplit.gateway.settings import GatewaySettings
    from musicsplit.gateway.tenancy.callers import Caller
    from musicsplit.gateway.tenancy.quotas import Quotas, UploadSlots
    from musicsplit.gateway.upstream.routing import Routed, Router
    from musicsplit.gateway.upstream.canaries import Canary
    from musicsplit.gateway.upstream.shadow import ShadowMirror

PIN_TRIES = 4  # a pinned call answered by another version (a split rollout) is sent again this often


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
            body, fwd = await self._spool(caller, content, headers)
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
            await self._give_back(body, upstream)
            raise
        # The user's answer is ready: a sample of answers is mirrored to a canary once they have gone by.
        mirror = self.shadow.offer_v2(routed.model, head.parameters.get("model_version"), body.length)
        return self._stream(upstream, head, chunks, _answer_headers(upstream, routed, choice, version), body, fwd,
                            mirror)

    async def _spool(self, caller: Caller, content: AsyncIterable[bytes],
                     headers: Mapping[str, str]) -> tuple[SpooledBody, dict[str, str]]:
        """The request's body, spooled while holding one of the tenant's upload places, and the request
        headers forwarded with it."""
        body = SpooledBody(self.settings.staging_dir)
        try:
            with self.uploads.hold(caller.tenant):
                await body.fill(content, self.max_bytes)
        except BaseException:
            body.close()
            raise
        return body, {k: v for k, v in headers.items() if k.lower() in FORWARDED}

    async def _give_back(self, body: SpooledBody | None, upstream: httpx.Response | None) -> None:
        """Everything a request that ends before its answer streams holds: its body, the upstream
        response, its v2 place."""
        if body is not None:
            body.close()
        if upstream is not None:
            await upstream.aclose()
        self.slots.give()

    def _stream(self, upstream: httpx.Response, head: Head, chunks: AsyncIterator[bytes], headers: dict[str, str],
                body: SpooledBody, fwd: dict[str, str], mirror=None) -> V2Answer:
        """The answer to stream on; with a `mirror`, the request and the answer are kept for it and handed
        over once the whole answer was sent (abandoned otherwise)."""
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

    async def infer_version(self, name: str, caller: Caller, version: str, content: AsyncIterable[bytes],
                            headers: Mapping[str, str]) -> V2Answer:
        """As `infer`, answered by `version` of the model `name` resolves to, only: a rollout's canary
        version at the canary's own URL, any other version at the model's endpoints last seen serving
        it (Conflict, 409, if none answers with it). Counts against the tenant's audio quota; never
        mirrored, never observed as an A/B arm (the listening room chose the version, not the flags)."""
        await self.quotas.audio_left(caller.tenant)
        model = self.resolve(name, caller).model
        self.slots.take()
        body: SpooledBody | None = None
        upstream: httpx.Response | None = None
        try:
            body, fwd = await self._spool(caller, content, headers)
            upstream, chunks, head = await self._pinned(model, version, body, fwd)
            await self.quotas.add_audio(caller.tenant, _number(head.parameters.get("audio_seconds")) or 0.0)
        except BaseException:
            await self._give_back(body, upstream)
            raise
        answer_headers = {**_forwarded(upstream), "X-Musicsplit-Model": model, "X-Musicsplit-Model-Version": version}
        return self._stream(upstream, head, chunks, answer_headers, body, fwd)

    async def _pinned(self, model: str, version: str, body: SpooledBody,
                      fwd: dict[str, str]) -> tuple[httpx.Response, AsyncIterator[bytes], Head]:
        """(response, its chunks, its head) from an endpoint that answered with `version`."""
        directory = self.shadow.directory
        canary = directory.get(model) if directory is not None else None
        to_canary = canary is not None and version == canary.canary_version
        served = None
        # The canary's own URL serves one version: asking again would not change it.
        for _ in range(1 if to_canary else PIN_TRIES):
            r = await (self._canary_call(canary, body, fwd) if to_canary else self._model_call(model, version, body,
                                                                                                  fwd))
            chunks = r.aiter_bytes()
            head = await read_head(r, chunks, self.settings.v2_max_parsed_response_bytes)
            served = str(head.parameters.get("model_version") or "")
            if served == version:
                return r, chunks, head
            await r.aclose()
        raise Conflict(f"no endpoint of {model} answered with version {version!r} (the last answered with "
                       f"{served or 'no version'}); GET /v1/models lists the versions of a rollout")

    async def _model_call(self, model: str, version: str, body: SpooledBody, fwd: dict[str, str]) -> httpx.Response:
        """The model's endpoints, those last seen serving `version` first (retries, breakers: routing.py)."""
        http = self.router.http

        async def one(state):
            return await post_streamed(http, f"{state.url}/v2/models/{state.model}/infer", body.chunks(),
                                       body.length, fwd)

        return (await self.router.call(model, one, version=version)).value

    async def _canary_call(self, canary: Canary, body: SpooledBody, fwd: dict[str, str]) -> httpx.Response:
        """The canary's own URL (published by the operator): its 400/413 passed on, anything else a 503."""
        unavailable = (f"the canary {canary.canary_version} of {canary.model} is not answering right now; "
                       "try again later")
        try:
            return await post_streamed(self.router.http, f"{canary.url}/v2/models/{canary.model}/infer",
                                       body.chunks(), body.length, fwd)
        except V2Error as exc:
            if is_client_fault(exc.status):
                raise client_error(exc.status, exc.message, exc.code) from None
            raise UpstreamUnavailable(unavailable, retry_after=exc.retry_after or 5) from None
        except httpx.TransportError:
            raise UpstreamUnavailable(unavailable, retry_after=5) from None

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


def _forwarded(upstream: httpx.Response) -> dict[str, str]:
    """The answer's headers a v2 client relies on, and its length where it is passed on unchanged."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in FORWARDED}
    if "content-encoding" not in upstream.headers and "content-length" in upstream.headers:
        headers["content-length"] = upstream.headers["content-length"]
    return headers


def _answer_headers(upstream: httpx.Response, routed: Routed, choice: Choice, version: str) -> dict[str, str]:
    """The answer's v2 headers, and which model, version and arm served it."""
    headers = _forwarded(upstream)
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

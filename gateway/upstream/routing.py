"""Routing a request to a predictor: endpoint choice, retries, breakers, fallback.

One call = up to `retry_attempts` tries (tenacity, exponential backoff),
each on the best endpoint not yet tried by this call (regions.py orders
them), so a dead replica or region costs a connection error, not the user's
request. When no endpoint of the chosen model can answer, the fallback model
is tried if the flag allows; otherwise a clean 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import httpx
import numpy as np
from opentelemetry import trace

from musicsplit.errors import BadAudio, BadRequest, MusicsplitError, PayloadTooLarge, UpstreamUnavailable
from musicsplit.gateway import metrics
from musicsplit.gateway.upstream.regions import EndpointPool, EndpointState
from musicsplit.gateway.upstream.resilience import NoEndpoint, is_client_fault, is_retryable, retrying
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.telemetry import inject
from musicsplit.v2client import AsyncV2Client, V2Error, raise_for_status

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")
T = TypeVar("T")
ERROR_BODY_BYTES = 64 * 1024


@dataclass
class Routed:
    value: object
    model: str
    endpoint: EndpointState
    fallback: bool = False


def client_error(status: int, message: str, code: str | None = None) -> MusicsplitError:
    """A predictor's 4xx that blames the request (is_client_fault), for the user.

    400, 413 and 422 are the predictor's own answers about the input, written for users: passed on.
    Any other 4xx (a proxy's 401/403, a 405...) speaks of the platform: a stable message, and
    the predictor's words go to the log.
    """
    if status == 413:
        return PayloadTooLarge(message)
    if status == 400:
        return BadRequest(message) if code == BadRequest.code else BadAudio(message)
    if status == 422:
        return BadRequest(message)
    log.warning("a predictor refused a request with HTTP %s: %s", status, message)
    return BadRequest(f"the predictor refused this request (HTTP {status}); check the request against the v2 "
                      "protocol, or report it if it is well-formed")


class Router:
    def __init__(self, settings: GatewaySettings, pool: EndpointPool):
        self.settings = settings
        self.pool = pool
        self._clients: dict[str, AsyncV2Client] = {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(settings.request_timeout_s,
                                                             connect=settings.connect_timeout_s))

    def v2client(self, url: str) -> AsyncV2Client:
        if url not in self._clients:
            # A Timeout object, so an unreachable region fails in connect_timeout_s, not request_timeout_s.
            self._clients[url] = AsyncV2Client(url, timeout=httpx.Timeout(  # type: ignore[arg-type]
                self.settings.request_timeout_s, connect=self.settings.connect_timeout_s))
        return self._clients[url]

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    async def close(self) -> None:
        await self._http.aclose()
        for c in self._clients.values():
            await c.aclose()

    async def call(self, model: str, fn: Callable[[EndpointState], Awaitable[T]], *,
                   fallback: str | None = None, version: str | None = None) -> Routed:
        """Run fn on an endpoint of `model` (retrying elsewhere), then of `fallback`.

        `version`: its own URL first where one is published (regions.EndpointPool.pinned), then
        endpoints seen serving it or not seen yet, then the rest (one URL may serve two versions
        during a rollout).
        """
        models = [model] + ([fallback] if fallback and fallback != model and self.pool.for_model(fallback) else [])
        if not self.pool.for_model(model) and not models[1:]:
            raise BadRequest(f"unknown model {model!r}: this gateway serves {sorted(self.pool.models())}")
        last: BaseException | None = None
        for m in models:
            if not self.pool.for_model(m):
                continue
            try:
                state, value = await self._with_retries(m, fn, version)
            except MusicsplitError:
                raise
            except Exception as exc:
                if not is_retryable(exc):
                    raise  # a bug or a malformed answer: not an outage, so no fallback (Sentry sees it)
                last = exc  # retries exhausted on this model
                log.warning("model %s unavailable after retries: %s", m, exc)
                continue
            if m != model:
                metrics.FALLBACKS.labels(model=model, fallback=m).inc()
            return Routed(value, m, state, fallback=m != model)
        retry_after = getattr(last, "retry_after", None) or self.pool.retry_after(model) or 5.0
        # What the predictors answered (URLs, their messages) is logged above, never shown to users.
        raise UpstreamUnavailable(f"no predictor for model {model!r} is answering right now; try again later",
                                  retry_after=retry_after,
                                  saturated=isinstance(last, V2Error) and last.status == 429)

    async def _with_retries(self, model: str, fn, version: str | None) -> tuple[EndpointState, object]:
        tried: set[str] = set()
        async for attempt in retrying(self.settings.retry_attempts, self.settings.retry_max_wait_s):
            with attempt:
                return await self._attempt(model, fn, tried, version)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, model: str, fn, tried: set[str], version: str | None = None):
        candidates = self.pool.candidates(model, version)
        if not candidates:
            raise NoEndpoint(model, self.pool.retry_after(model))
        if version is not None:  # stable: the pool's order within each group
            # Endpoints not seen yet share the front with those seen serving it (the first chunk of a
            # job runs alone, so its other chunks must be free to reach replicas not tried yet).
            candidates.sort(key=lambda s: 1 if s.version not in (None, version) else 0)
        fresh = [c for c in candidates if c.url not in tried]
        state = (fresh or candidates)[0]
        tried.add(state.url)
        trial = state.breaker.before_call()
        state.inflight += 1
        start = time.perf_counter()
        outcome = "success"
        try:
            with tracer.start_as_current_span("proxy", attributes={
                    "predictor.model": model, "predictor.region": state.region, "predictor.url": state.url}):
                value = await fn(state)
        except V2Error as exc:
            outcome = f"http_{exc.status}"
            if is_client_fault(exc.status):
                state.breaker.success()  # it answered about the input: the endpoint works
                raise client_error(exc.status, exc.message, exc.code) from None
            if exc.status == 429:
                state.breaker.success()  # alive, only saturated: retried, but no reason to open
            else:
                state.breaker.failure()  # a 5xx, or a 404 (this replica does not serve the model)
            raise
        except httpx.TransportError as exc:
            outcome = "connection_error"
            state.breaker.failure()
            state.healthy = False  # skip it until the next probe says otherwise
            log.warning("endpoint %s %s failed: %s", state.region, state.url, exc)
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            state.breaker.release(trial)  # no verdict, but a half-open trial must not stay taken
            raise
        except BaseException:
            outcome = "error"
            state.breaker.failure()  # a malformed answer (or a bug): never leave a trial taken
            raise
        else:
            state.breaker.success()
            return state, value
        finally:
            state.inflight -= 1
            metrics.UPSTREAM.labels(model=model, region=state.region, outcome=outcome).inc()
            metrics.UPSTREAM_SECONDS.labels(model=model, region=state.region).observe(time.perf_counter() - start)

    # -- the two kinds of calls ------------------------------------------------

    async def separate(self, model: str, samples: np.ndarray, sample_rate: int, *, stems=None,
                       fallback: str | None = None, shifts=None, overlap=None, segment=None,
                       version: str | None = None) -> Routed:
        """Separate [C, T] audio on some endpoint (of `version` first); returns Routed(value=Separation)."""

        async def one(state: EndpointState):
            client = self.v2client(state.url)
            sep = await client.separate(state.model, samples, sample_rate, stems=stems, shifts=shifts,
                                        overlap=overlap, segment=segment, output_format="fp32",
                                        headers=inject({}))
            served = (sep.parameters or {}).get("model_version")
            if served:
                state.version = str(served)
            return sep

        return await self.call(model, one, fallback=fallback, version=version)

    async def forward(self, model: str, path: str, body: Callable[[], AsyncIterator[bytes]], length: int,
                      headers: dict[str, str], *, fallback: str | None = None) -> Routed:
        """The v2 pass-through: the body (`body()` yields it afresh for every try) to
        `/v2/models/{model}{path}` on some endpoint. `value` is the endpoint's 2xx response, open and
        unread: the caller streams it on and closes it."""

        async def one(state: EndpointState):
            return await post_streamed(self._http, f"{state.url}/v2/models/{state.model}{path}", body(), length,
                                       headers)

        return await self.call(model, one, fallback=fallback)


async def post_streamed(http: httpx.AsyncClient, url: str, content: AsyncIterator[bytes], length: int,
                        headers: dict[str, str]) -> httpx.Response:
    """POST a streamed body of `length` bytes (trace context injected); the 2xx response comes back
    open and unread, for the caller to stream on and close. An error answer raises V2Error with its
    status, Retry-After and text (cut at ERROR_BODY_BYTES: a proxy's error page is never buffered whole)."""
    request = http.build_request("POST", url, content=content,
                                 headers=inject({**headers, "content-length": str(length)}))
    r = await http.send(request, stream=True)
    if not r.is_success:
        try:
            text = await read_at_most(r, ERROR_BODY_BYTES)
        finally:
            await r.aclose()
        kept = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "retry-after")}
        raise_for_status(httpx.Response(r.status_code, headers=kept, content=text))
    return r


async def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """Up to `limit` bytes of a streamed response's body."""
    out = bytearray()
    async for chunk in response.aiter_bytes():
        out.extend(chunk[: limit - len(out)])
        if len(out) >= limit:
            break
    return bytes(out)

"""Shadow traffic (ADR 0108): users' separations mirrored to a canary, compared, never answered.

While a model has a canary step (canaries.py), a sampled share of users'
successful separations — v2 pass-through requests and job chunks, each
compared on its own — is sent again, as it was sent, to the canary's own URL
with `X-Musicsplit-Source: shadow` (so the predictor counts it apart from
users). The canary's stems are scored against the stable stems the user got:
SDR per stem, the stable's as the reference, exported as
`musicsplit_gateway_shadow_agreement_db`; the operator's analysis can
require a minimum.

Never at the user's expense: the mirror is decided after the user's answer
is ready and runs as a background task the answer never waits for; at most
`shadow_max_concurrent` run at once and any beyond are dropped (counted
`skipped`), never queued. A request the canary itself served (Knative sends
it its share) has nothing to be compared with and is not mirrored. A v2
answer streams to its user unread (passthrough.py); a mirrored one is also
spooled (memory up to a few MiB, then the staging area) and compared once it
has gone by whole.

Tenancy: shadow calls go from the gateway straight to the canary, so they
pass no tenant's authentication, quota or usage counters, and their metrics
carry no tenant; only the user's own request is counted, once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable
from urllib.parse import quote

import httpx
import numpy as np

from musicsplit.gateway import metrics
from musicsplit.gateway.upstream.canaries import Canary, CanaryDirectory
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.quality import SILENCE_DBFS, rms_dbfs, sdr
from musicsplit.v2client import SOURCE_HEADER, V2Error, decode_response, encode_request

log = logging.getLogger(__name__)

# Agreement is reported within 0..100 dB. Identical stems score 100, not +inf; below 0 dB the
# canary's stem is further from the stable's than silence is, and scores 0: no agreement at all.
# (A histogram's _sum must never decrease, or rate() and the analysis' windowed means break;
# Prometheus' Python client also drops _sum from a histogram with a negative bucket.)
AGREEMENT_CAP_DB = 100.0
OUTCOMES = ("compared", "skipped", "failed")
HEADER_SLACK = 1 << 20  # a canary's answer may exceed the stable's by its JSON header's differences


def agreement_db(stable: np.ndarray, canary: np.ndarray) -> float:
    """SDR (dB) of the canary's stem with the stable's as the reference, within 0..cap.
    Identical stems, and two silent ones, agree fully (the cap; the formula alone
    would give a finite value that depends on the level, and 0 dB for silence)."""
    ref = np.asarray(stable, dtype=np.float64)
    est = np.asarray(canary, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"stem shapes differ: stable {list(ref.shape)}, canary {list(est.shape)}")
    n = max(ref.size, 1)
    silent = (rms_dbfs(float(np.sum(ref * ref)), n) < SILENCE_DBFS
              and rms_dbfs(float(np.sum(est * est)), n) < SILENCE_DBFS)
    if silent or np.array_equal(ref, est):
        return AGREEMENT_CAP_DB
    return float(np.clip(sdr(ref, est), 0.0, AGREEMENT_CAP_DB))


def agreements(stable: dict[str, np.ndarray], canary: dict[str, np.ndarray]) -> dict[str, float]:
    """Agreement per stem both answers hold."""
    common = sorted(set(stable) & set(canary))
    if not common:
        raise ValueError(f"no stem in common: stable {sorted(stable)}, canary {sorted(canary)}")
    return {name: agreement_db(stable[name], canary[name]) for name in common}


class V2Mirror:
    """A v2 pass-through's mirror, waiting for its user's answer to have been sent."""

    def __init__(self, ready: asyncio.Future, request_bytes: int):
        self._ready = ready
        self._request_bytes = request_bytes

    def send(self, request: Callable[[], tuple[bytes, dict[str, str]]], stable: Callable[[], dict[str, np.ndarray]],
             answer_bytes: int, done: Callable[[], None]) -> None:
        """Compare now: `request()` gives the body and headers to send, `stable()` the user's stems (both
        called in a thread), `done()` frees what they read from once compared."""
        if self._ready.done():  # the gateway is stopping: the mirror was cancelled
            done()
        else:
            self._ready.set_result((request, stable, answer_bytes + HEADER_SLACK, done, self._request_bytes))

    def abandon(self) -> None:
        self._ready.cancel()


class ShadowMirror:
    """Mirrors sampled separations to canaries; a no-op unless `shadow_enabled`."""

    def __init__(self, settings: GatewaySettings, *, directory: CanaryDirectory | None = None,
                 rng: Callable[[], float] = random.random):
        self.enabled = settings.shadow_enabled
        self.sample_rate = settings.shadow_sample_rate
        self.max_concurrent = settings.shadow_max_concurrent
        self.max_bytes = settings.shadow_max_bytes
        self.directory = directory
        if self.enabled and directory is None:
            self.directory = CanaryDirectory(settings.shadow_namespace, settings.shadow_refresh_s,
                                             settings.shadow_kubeconfig)
        self._rng = rng
        self._inflight: set[asyncio.Task] = set()
        self._http: httpx.AsyncClient | None = None
        self._timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def start(self, models: set[str]) -> None:
        if not self.enabled:
            return
        for model in models:  # every outcome's series from the start (rate() sees the first event)
            for outcome in OUTCOMES:
                metrics.SHADOW_REQUESTS.labels(model=model, outcome=outcome)
        self._http = httpx.AsyncClient(timeout=self._timeout,
                                       limits=httpx.Limits(max_connections=self.max_concurrent))
        self.directory.start()
        log.info("shadow traffic on: %.0f %% of eligible separations, at most %d at once, canaries from "
                 "SeparationModels in %s", 100 * self.sample_rate, self.max_concurrent, self.directory.namespace)

    async def stop(self) -> None:
        if not self.enabled:
            return
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.directory.stop()
        if self._http is not None:
            await self._http.aclose()

    # -- what users' requests offer ---------------------------------------------------------

    def offer_v2(self, model: str, served_version: str | None, request_bytes: int) -> V2Mirror | None:
        """A v2 pass-through whose answer is about to stream to the user: None, or its mirror, which
        takes the request and that answer (`V2Mirror.send`) once the answer has gone by. Its place
        under `shadow_max_concurrent` is taken now, so the bound holds while answers stream; its size
        is checked against `shadow_max_bytes` now (the request) and when sent (the answers too)."""
        canary = self._admit(model, served_version, request_bytes)
        if canary is None:
            return None
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._launch(self._compare_when_sent(canary, served_version, ready))
        return V2Mirror(ready, request_bytes)

    async def _compare_when_sent(self, canary: Canary, served_version: str, ready: asyncio.Future) -> None:
        try:
            request, stable, size, done, request_bytes = await ready
        except asyncio.CancelledError:  # the user's answer did not go through whole: nothing to compare
            return
        try:
            if request_bytes + 2 * size > self.max_bytes:  # the answer made it too large to hold
                metrics.SHADOW_REQUESTS.labels(model=canary.model, outcome="skipped").inc()
                return
            await self._compare(canary, served_version, request, stable, size)
        finally:
            done()

    def offer_chunk(self, model: str, served_version: str | None, samples: np.ndarray, sample_rate: int,
                    stems: dict[str, np.ndarray], *, stem_names: list[str] | None = None,
                    shifts: int | None = None) -> None:
        """A job's chunk, separated into `stems` for the user: the same chunk goes to the canary."""
        size = sum(np.asarray(s).nbytes for s in stems.values()) + HEADER_SLACK
        canary = self._admit(model, served_version, samples.nbytes + 2 * size)
        if canary is None:
            return

        def request() -> tuple[bytes, dict[str, str]]:
            return encode_request(samples, sample_rate, stems=stem_names, shifts=shifts, output_format="fp32")

        self._launch(self._compare(canary, served_version, request, lambda: stems, size))

    def _admit(self, model: str, served_version: str | None, size: int) -> Canary | None:
        """The canary to mirror this separation (`size` bytes to hold) to, or None. Counted `skipped`
        only when it was sampled and a bound (in flight, bytes) leaves no room."""
        if not self.enabled:
            return None
        canary = self.directory.get(model)
        # The canary answered the user itself (its traffic share), or nobody knows who did.
        if canary is None or not served_version or served_version == canary.canary_version:
            return None
        if self._rng() >= self.sample_rate:
            return None
        if len(self._inflight) >= self.max_concurrent or size > self.max_bytes:
            metrics.SHADOW_REQUESTS.labels(model=model, outcome="skipped").inc()
            return None
        return canary

    def _launch(self, coro) -> None:
        task = asyncio.create_task(coro, name="shadow")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # -- the mirrored call -----------------------------------------------------------------

    async def _compare(self, canary: Canary, stable_version: str, request, stable, bound: int) -> None:
        outcome = "failed"
        try:
            body, headers = await asyncio.to_thread(request)
            content, answer_headers = await self._call(canary, body, headers, bound)
            canary_version, scores = await asyncio.to_thread(self._score, content, answer_headers, stable,
                                                             stable_version)
            for stem, value in scores.items():
                metrics.SHADOW_AGREEMENT.labels(model=canary.model, model_namespace=self.directory.namespace,
                                                canary_version=canary_version, stable_version=stable_version,
                                                stem=stem).observe(value)
            outcome = "compared"
        except asyncio.CancelledError:
            outcome = None
            raise
        except Exception as exc:  # the canary's trouble never reaches a user; the analysis sees the count
            log.warning("shadow call for %s to %s failed: %s: %s", canary.model, canary.url, type(exc).__name__,
                        str(exc)[:300])
        finally:
            if outcome:
                metrics.SHADOW_REQUESTS.labels(model=canary.model, outcome=outcome).inc()

    async def _call(self, canary: Canary, body: bytes, headers: dict[str, str], bound: int):
        """POST to the canary; its answer read up to `bound` bytes."""
        url = f"{canary.url}/v2/models/{quote(canary.model, safe='')}/infer"
        async with self._http.stream("POST", url, content=body, headers={**headers, SOURCE_HEADER: "shadow"}) as r:
            content = bytearray()
            async for piece in r.aiter_bytes():
                content += piece
                if len(content) > bound:
                    raise ValueError(f"the canary's answer is over {bound} bytes (the stable one's size)")
            if r.status_code >= 300:
                raise V2Error(r.status_code, bytes(content[:300]).decode(errors="replace"))
            return bytes(content), r.headers

    @staticmethod
    def _score(content: bytes, headers, stable, stable_version: str) -> tuple[str, dict[str, float]]:
        answer = decode_response(content, headers)
        version = str(answer.model_version or "")
        if not version or version == stable_version:
            raise ValueError(f"the canary's URL answered as version {version or 'unknown'}, not a canary of "
                             f"stable {stable_version}")
        return version, agreements(stable(), answer.stems)

"""Regional predictor endpoints: nearest and healthy first, health-checked.

Each endpoint (model, url, region) has a circuit breaker and a health flag
kept fresh by a background probe of `/v2/models/{model}/ready`. Candidates
for a request are ordered: breaker available, then healthy, then region
preference (`region_order`, nearest first), then fewest requests in flight,
so a dead region is skipped without anyone waiting on it, and several
replicas of one region share the chunks of a long track.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

import httpx

from musicsplit.gateway import metrics
from musicsplit.gateway.upstream.resilience import CircuitBreaker
from musicsplit.gateway.settings import Endpoint

log = logging.getLogger(__name__)


@dataclass
class EndpointState:
    endpoint: Endpoint
    breaker: CircuitBreaker
    rank: int  # region preference, 0 = nearest
    healthy: bool = True  # optimistic until the first probe says otherwise
    inflight: int = 0
    version: str | None = None
    stems: frozenset[str] | None = None  # the model's outputs, as its metadata lists them (None: not known yet)
    last_error: str | None = None
    checked_at: float = 0.0

    @property
    def url(self) -> str:
        return self.endpoint.url.rstrip("/")

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def region(self) -> str:
        return self.endpoint.region


class EndpointPool:
    def __init__(self, endpoints: list[Endpoint], region_order: list[str], *, failures: int = 3,
                 reset_s: float = 15.0):
        order = {r: i for i, r in enumerate(region_order)}
        self.states: list[EndpointState] = []
        for ep in endpoints:
            state = EndpointState(ep, None, order.get(ep.region, len(order)))  # type: ignore[arg-type]
            state.breaker = CircuitBreaker(f"{ep.region}/{ep.model}@{ep.url}", failures, reset_s,
                                           on_change=self._breaker_changed(state, alert=True))
            self.states.append(state)
            metrics.ENDPOINT_UP.labels(model=ep.model, region=ep.region).set(1)
            metrics.BREAKER_OPEN.labels(model=ep.model, region=ep.region, endpoint=state.url).set(0)
        self._task: asyncio.Task | None = None
        self._failures, self._reset_s = failures, reset_s
        # Where one version of a model answers on its own (canaries.py: the SeparationModels' status),
        # so a job's chunks all reach the version it pinned, whatever split a shared URL does.
        self.version_url: Callable[[str, str], str | None] = lambda model, version: None
        self._pinned: dict[tuple[str, str, str], EndpointState] = {}

    @staticmethod
    def _breaker_changed(state: EndpointState, *, alert: bool):
        """The breaker's metrics and log line. Only configured endpoints feed `breaker_open` (what
        MusicsplitGatewayBreakerOpen pages on): a version's own URL (`pinned`) outlives its revision,
        so an open breaker there would page forever after the version is gone; its failures fall back
        to the configured URL, and the operator's rollout analysis watches that version."""
        def changed(breaker, old, new):
            metrics.BREAKER_STATE.labels(model=state.model, region=state.region).set(
                {"closed": 0, "half_open": 1, "open": 2}[new])
            if new == "open":
                metrics.BREAKER_OPENS.labels(model=state.model, region=state.region).inc()
            if alert and new in ("open", "closed"):  # half-open stays 1: not proven healthy yet
                metrics.BREAKER_OPEN.labels(model=state.model, region=state.region, endpoint=state.url).set(
                    1 if new == "open" else 0)
            log.warning("circuit breaker %s: %s -> %s", breaker.name, old, new)
        return changed

    def models(self) -> set[str]:
        return {s.model for s in self.states}

    def for_model(self, model: str) -> list[EndpointState]:
        return [s for s in self.states if s.model == model]

    def candidates(self, model: str, version: str | None = None) -> list[EndpointState]:
        """Endpoints of `model`, best first; endpoints with an open breaker are left out. With a
        `version` published at a URL of its own, that URL comes first."""
        usable = sorted((s for s in self.for_model(model) if s.breaker.available()),
                        key=lambda s: (not s.healthy, s.rank, s.inflight))
        pinned = self.pinned(model, version) if version else None
        return [pinned, *usable] if pinned is not None and pinned.breaker.available() else usable

    def pinned(self, model: str, version: str) -> EndpointState | None:
        """The endpoint of one version of `model` alone (a per-revision / per-predictor URL), if published."""
        url = self.version_url(model, version)
        if not url:
            return None
        key = (model, version, url)
        if key not in self._pinned:
            shared = self.for_model(model)
            region = shared[0].region if shared else "local"  # the revision runs where the model does
            ep = Endpoint(model=model, url=url, region=region)
            state = EndpointState(ep, None, -1, version=version)  # type: ignore[arg-type]
            state.breaker = CircuitBreaker(f"{region}/{model}@{url} ({version})", self._failures, self._reset_s,
                                           on_change=self._breaker_changed(state, alert=False))
            self._pinned = {k: v for k, v in self._pinned.items() if k[:2] != (model, version)}
            self._pinned[key] = state
        return self._pinned[key]

    def retry_after(self, model: str) -> float:
        """Seconds until some endpoint of `model` may take requests again."""
        waits = [s.breaker.retry_after() for s in self.for_model(model)]
        return min(waits) if waits else 30.0

    def version(self, model: str) -> str | None:
        for s in self.for_model(model):
            if s.version:
                return s.version
        return None

    def stems(self, model: str) -> frozenset[str] | None:
        """The stems `model` produces, as its ready endpoints' metadata says (None while none has said)."""
        known = [s.stems for s in self.for_model(model) if s.stems is not None and s.healthy]
        known = known or [s.stems for s in self.for_model(model) if s.stems is not None]
        return frozenset().union(*known) if known else None

    # -- health ----------------------------------------------------------------

    async def probe(self, client: httpx.AsyncClient, state: EndpointState) -> None:
        try:
            r = await client.get(f"{state.url}/v2/models/{state.model}/ready", timeout=2.0)
            ready = r.status_code == 200
            state.last_error = None if ready else f"HTTP {r.status_code}: {r.text[:200]}"
            if r.status_code == 503:
                # KServe's ready route does not say why; an empty infer gets the predictor's own
                # NotReady message ("still loading" vs "failed to load: ...") without any model time.
                why = await client.post(f"{state.url}/v2/models/{state.model}/infer", content=b'{"inputs": []}',
                                        timeout=2.0)
                if why.status_code == 503:
                    state.last_error = f"HTTP 503: {why.text[:300]}"
            if ready:
                await self._read_stems(client, state)
        except httpx.HTTPError as exc:
            ready = False
            state.last_error = f"{type(exc).__name__}: {exc}"
        state.checked_at = time.monotonic()
        if ready != state.healthy:
            # The reason too: "failed to load: ..." is the predictor's own (MusicsplitModelLoadFailed pages on it).
            log.warning("endpoint %s %s is now %s%s", state.region, state.url, "healthy" if ready else "unhealthy",
                        "" if ready else f" ({state.last_error})")
        state.healthy = ready
        metrics.ENDPOINT_UP.labels(model=state.model, region=state.region).set(1 if ready else 0)

    @staticmethod
    async def _read_stems(client: httpx.AsyncClient, state: EndpointState) -> None:
        """The model's metadata (`GET /v2/models/{name}`) lists one output per stem."""
        r = await client.get(f"{state.url}/v2/models/{state.model}", timeout=2.0)
        try:
            names = [o["name"] for o in r.json().get("outputs") or []] if r.status_code == 200 else []
        except (ValueError, TypeError, KeyError, AttributeError):
            names = []
        if names:
            state.stems = frozenset(names)

    async def probe_all(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self.probe(client, s) for s in self.states))

    async def run(self, interval: float) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                await self.probe_all(client)
                await asyncio.sleep(interval)

    def start(self, interval: float) -> None:
        if self._task is None and self.states:
            self._task = asyncio.create_task(self.run(interval), name="endpoint-health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

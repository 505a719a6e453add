"""Retries with backoff, and a circuit breaker per predictor endpoint.

Retries (tenacity) cover what a second try can fix: connection errors,
timeouts, 429 (saturated), any 5xx (crashed, loading, overloaded replica)
and 404 (that replica does not serve the model). Other 4xx are bad input,
the caller's to fix, and are never retried. A breaker opens after `failures` consecutive
failures of one endpoint, so requests stop going to a dead replica; after
`reset_s` one trial request (half-open) decides whether it closes again.
See docs/adr/0201-gateway-resilience.md for why this is a small class and
not pybreaker (its async support is Tornado-only).
"""

from __future__ import annotations

import time
from typing import Callable

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from musicsplit.v2client import V2Error

# 4xx a predictor answers that are not about the request: 404 (model-name mismatch on that
# replica) and 429 (saturated). Every other 4xx is bad input; every 5xx is the predictor's failure.
UPSTREAM_4XX = {404, 429}


def is_client_fault(status: int) -> bool:
    """A predictor's answer that blames the request (passed on to the user, never retried)."""
    return 400 <= status < 500 and status not in UPSTREAM_4XX


class NoEndpoint(Exception):
    """Every endpoint of a model is open-circuited or already failed this request."""

    def __init__(self, model: str, retry_after: float):
        super().__init__(f"no endpoint of {model} can take requests now")
        self.model = model
        self.retry_after = retry_after


class CircuitOpen(Exception):
    """Raised instead of calling an endpoint whose breaker is open."""

    def __init__(self, endpoint: str, retry_after: float):
        super().__init__(f"circuit open for {endpoint}")
        self.endpoint = endpoint
        self.retry_after = retry_after


class CircuitBreaker:
    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, name: str, failures: int = 3, reset_s: float = 15.0,
                 on_change: Callable[["CircuitBreaker", str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.max_failures = failures
        self.reset_s = reset_s
        self.on_change = on_change
        self.clock = clock
        self._state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._trial = False

    @property
    def state(self) -> str:
        if self._state == self.OPEN and self.clock() - self.opened_at >= self.reset_s:
            self._set(self.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        return max(0.0, self.reset_s - (self.clock() - self.opened_at)) if self._state == self.OPEN else 0.0

    def available(self) -> bool:
        """Would a call go through now (closed, or half-open with no trial running)?"""
        state = self.state
        return state == self.CLOSED or (state == self.HALF_OPEN and not self._trial)

    def before_call(self) -> bool:
        """Admit a call or raise CircuitOpen; True when this call is the half-open trial."""
        state = self.state
        if state == self.OPEN or (state == self.HALF_OPEN and self._trial):
            raise CircuitOpen(self.name, self.retry_after() or self.reset_s)
        if state == self.HALF_OPEN:
            self._trial = True
            return True
        return False

    def release(self, trial: bool) -> None:
        """A call ended with no verdict (cancelled): a trial it held may be run again."""
        if trial:
            self._trial = False

    def success(self) -> None:
        self.failures = 0
        self._trial = False
        if self._state != self.CLOSED:
            self._set(self.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        self._trial = False
        if self._state == self.HALF_OPEN or self.failures >= self.max_failures:
            self.opened_at = self.clock()
            if self._state != self.OPEN:
                self._set(self.OPEN)

    def _set(self, state: str) -> None:
        old, self._state = self._state, state
        if self.on_change:
            self.on_change(self, old, state)


def is_retryable(exc: BaseException) -> bool:
    """A failure another try (maybe on another endpoint) can fix."""
    if isinstance(exc, (httpx.TransportError, CircuitOpen, NoEndpoint)):
        return True
    return isinstance(exc, V2Error) and not is_client_fault(exc.status)


def retrying(attempts: int, max_wait: float) -> AsyncRetrying:
    """tenacity policy: exponential backoff with jitter, retryable errors only.

    A predictor's Retry-After (429 saturated, 503 loading) stretches the wait, up to `max_wait`.
    """
    backoff = wait_exponential_jitter(multiplier=0.1, max=max_wait, jitter=0.1)

    def wait(state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None) if isinstance(exc, V2Error) else None
        return min(max_wait, max(backoff(state), hinted or 0.0))

    return AsyncRetrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait,
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )

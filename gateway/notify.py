"""Telling people: Sentry for unexpected errors, Slack and PagerDuty for incidents.

Incidents (a model that fails to load, a circuit breaker opening) go to a
Slack incoming webhook and to PagerDuty Events API v2, each de-duplicated:
one message per incident key per `dedup_s` from this process, and the same
`dedup_key` to PagerDuty, which folds repeats from other replicas into one
incident. Sending never blocks or fails the request that noticed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import httpx

from musicsplit.gateway import metrics
from musicsplit.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def init_sentry(dsn: str | None, release: str | None = None, environment: str | None = None) -> bool:
    """sentry-sdk with the FastAPI/Starlette integrations (auto-enabled); no-op without a DSN.

    The DSN is MUSICSPLIT_GATEWAY_SENTRY_DSN (settings), else Sentry's own SENTRY_DSN.
    """
    dsn = dsn or os.environ.get("SENTRY_DSN")
    if not dsn:
        return False
    import sentry_sdk

    from sentry_sdk.integrations.logging import ignore_logger

    sentry_sdk.init(dsn=dsn, release=release, environment=environment, traces_sample_rate=0.0)
    # report() captures with tags; its log line would be a second event.
    ignore_logger(__name__)
    return True


def report(exc: BaseException, where: str, **tags: str) -> str:
    """Log and send to Sentry an unexpected error; the reference to quote to the user."""
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s in %s", reference, where, exc_info=exc)
    capture(exc, reference=reference, **tags)
    return reference


def capture(exc: BaseException, **tags: str) -> None:
    try:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            for k, v in tags.items():
                scope.set_tag(k, v)
            sentry_sdk.capture_exception(exc)
    except ImportError:  # pragma: no cover
        pass


class Notifier:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self._sent: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()

    def incident(self, key: str, summary: str, *, severity: str = "error", details: dict | None = None) -> bool:
        """Send (in the background) unless the same key was sent within the dedup window."""
        now = time.monotonic()
        if now - self._sent.get(key, -1e18) < self.settings.notify_dedup_s:
            metrics.NOTIFICATIONS.labels(channel="any", outcome="deduplicated").inc()
            return False
        self._sent[key] = now
        self._spawn(self._send(key, summary, severity, details or {}, "trigger"))
        return True

    def resolve(self, key: str, summary: str) -> bool:
        """Close an incident this process opened (PagerDuty resolve on the same dedup_key)."""
        if self._sent.pop(key, None) is None:
            return False
        self._spawn(self._send(key, summary, "info", {}, "resolve"))
        return True

    def breaker_changed(self, state, old: str, new: str) -> None:
        """EndpointPool hook: an opening breaker is an incident, its closing resolves it."""
        key = f"breaker-open:{state.region}:{state.model}:{state.url}"
        if new == "closed":
            self.resolve(key, f"musicsplit gateway: circuit breaker closed again for {state.model} in {state.region}")
        if new == "open":
            self.incident(
                key,
                f"musicsplit gateway: circuit breaker open for {state.model} in {state.region}",
                severity="error",
                details={"model": state.model, "region": state.region, "endpoint": state.url,
                         "last_error": state.last_error or "consecutive request failures"},
            )

    def model_not_ready(self, state) -> None:
        """EndpointPool hook: a live predictor whose model failed to load pages someone."""
        self.incident(
            f"model-load-failed:{state.region}:{state.model}:{state.url}",
            f"musicsplit: model {state.model} failed to load in {state.region}",
            severity="critical",
            details={"model": state.model, "region": state.region, "endpoint": state.url, "error": state.last_error},
        )

    def _spawn(self, coro) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, key: str, summary: str, severity: str, details: dict, action: str) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            sends = []
            slack, pagerduty = self.settings.slack_webhook_url, self.settings.pagerduty_routing_key
            if slack:
                icon = ":rotating_light:" if action == "trigger" else ":white_check_mark:"
                text = f"{icon} *{summary}*\n" + "\n".join(f"• {k}: {v}" for k, v in details.items())
                sends.append(("slack", client.post(slack.get_secret_value(), json={"text": text})))
            if pagerduty:
                event: dict = {
                    "routing_key": pagerduty.get_secret_value(),
                    "event_action": action,
                    "dedup_key": f"musicsplit-gateway:{key}",
                }
                if action == "trigger":
                    event["payload"] = {
                        "summary": summary[:1024],
                        "source": "musicsplit-gateway",
                        "severity": severity,
                        "component": "gateway",
                        "custom_details": details,
                    }
                sends.append(("pagerduty", client.post(self.settings.pagerduty_url, json=event)))
            for channel, coro in sends:
                try:
                    r = await coro
                    outcome = "sent" if r.status_code < 300 else "rejected"
                    if outcome != "sent":
                        log.warning("%s answered %s: %s", channel, r.status_code, r.text[:200])
                except httpx.HTTPError as exc:
                    outcome = "error"
                    log.warning("could not notify %s: %s", channel, exc)
                metrics.NOTIFICATIONS.labels(channel=channel, outcome=outcome).inc()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

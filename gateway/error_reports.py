"""Unexpected errors: logged with a reference the user can quote, and sent to Sentry.

Incidents (a circuit breaker open, a model that fails to load) are not sent from
here: the gateway exports them as metrics and Alertmanager pages on the alerts
in alerts/ (docs/adr/0208-paging-through-alertmanager.md).
"""

from __future__ import annotations

import logging
import os
import uuid

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
    import sentry_sdk  # a no-op client until init_sentry() gives it a DSN

    with sentry_sdk.new_scope() as scope:
        for k, v in {"reference": reference, **tags}.items():
            scope.set_tag(k, v)
        sentry_sdk.capture_exception(exc)
    return reference

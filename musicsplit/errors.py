"""User-facing failures, one type each, mapped to HTTP in one place.

Every component (predictor, gateway) raises these and registers
`http_payload` in its web framework; the body follows the KServe v2 error
shape (`{"error": message}`) plus a stable `code` clients can switch on.
"""

from __future__ import annotations


class MusicsplitError(Exception):
    """Base for failures a client should see as a clean HTTP answer."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.headers: dict[str, str] = {}


class BadRequest(MusicsplitError):
    """A parameter or request field is wrong (not the audio itself)."""

    status = 400
    code = "bad_request"


class BadAudio(BadRequest):
    """The audio cannot be separated as sent: undecodable, empty, NaN, too long..."""

    code = "bad_audio"


class Unauthorized(MusicsplitError):
    """No credentials, or credentials that do not check out (RFC 6750: WWW-Authenticate says which)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, error: str | None = "invalid_token", realm: str = "musicsplit"):
        super().__init__(message)
        # No error code when no credentials were sent at all (RFC 6750 section 3.1).
        challenge = f'Bearer realm="{realm}"'
        if error:
            description = message.replace('"', "'").replace("\\", "/")
            challenge += f', error="{error}", error_description="{description}"'
        self.headers["WWW-Authenticate"] = challenge


class Forbidden(MusicsplitError):
    """Valid credentials that grant no access here (a token for a tenant this gateway does not serve)."""

    status = 403
    code = "forbidden"


class NotFound(MusicsplitError):
    """No such job, batch, stem or result (any more)."""

    status = 404
    code = "not_found"


class Conflict(MusicsplitError):
    """The resource exists but is not in a state that allows this (a job still running)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(MusicsplitError):
    status = 413
    code = "payload_too_large"


class Saturated(MusicsplitError):
    """Every inference slot and queue place is taken: come back later."""

    status = 429
    code = "saturated"


class QuotaExceeded(MusicsplitError):
    """A tenant's quota (concurrent jobs, requests per minute, audio minutes per day) is used up."""

    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, quota: str, retry_after: float):
        super().__init__(message, retry_after=retry_after)
        self.quota = quota


class NotReady(MusicsplitError):
    """The model is not loaded (yet, or its load failed)."""

    status = 503
    code = "not_ready"


class UpstreamUnavailable(MusicsplitError):
    """No predictor could take the request (gateway side). `saturated`: they answered, all busy (429),
    rather than failing or not answering."""

    status = 503
    code = "upstream_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, saturated: bool = False):
        super().__init__(message, retry_after=retry_after)
        self.saturated = saturated


class ModelChanged(MusicsplitError):
    """A gateway job's later chunk could only be served by another model version than its first."""

    status = 503
    code = "model_changed"


class Unsupported(MusicsplitError):
    """This deployment does not offer the feature (e.g. presigned uploads without a shared bucket)."""

    status = 501
    code = "unsupported"


def http_payload(exc: MusicsplitError) -> tuple[int, dict, dict[str, str]]:
    """(status, JSON body, headers) for an error; Retry-After in whole seconds."""
    headers: dict[str, str] = dict(getattr(exc, "headers", {}))
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(round(exc.retry_after))))
    return exc.status, {"error": exc.message, "code": exc.code}, headers

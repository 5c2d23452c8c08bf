"""Errors raised by the client. Decisions rest on the HTTP status and the envelope's ``error`` code,
never on message text."""
from __future__ import annotations

from typing import Any, Optional


class TaleError(Exception):
    """Base of every error this package raises."""


class ApiError(TaleError):
    """The spawner answered with a non-success status.

    ``code`` is the envelope's stable ``error`` code (``not_found``, ``bad_request``,
    ``unauthorized``, ``duplicate``, ``session_quota``, ``payload_too_large``, ``upstream_error``,
    ``create_failed``, …); ``retry_after`` is the ``retry-after`` header in seconds, when sent.
    """

    def __init__(
        self,
        status: int,
        code: Optional[str],
        message: Optional[str] = None,
        retry_after: Optional[float] = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.body = body
        text = f"HTTP {status}"
        if code:
            text += f" {code}"
        if message:
            text += f": {message}"
        super().__init__(text)


class BadRequest(ApiError):
    """400: the request was refused as invalid."""


class Unauthorized(ApiError):
    """401: wrong token, clock skew over 30 s, or a replayed signature."""


class NotFound(ApiError):
    """404: no such session (or path, for the file routes)."""


class Conflict(ApiError):
    """409: the session exists or is being created (``duplicate``)."""


class PayloadTooLarge(ApiError):
    """413: the body is over the spawner's request cap."""


class TooManyRequests(ApiError):
    """429: a cap was reached (``session_quota``, ``busy``); see ``retry_after``."""


class UpstreamError(ApiError):
    """502: the session's runnerd or the backend failed."""


class Unavailable(ApiError):
    """503: the spawner is over a budget or unhealthy; see ``retry_after``."""


_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: TooManyRequests,
    502: UpstreamError,
    503: Unavailable,
}


def api_error(status: int, body: Any, retry_after: Optional[float]) -> ApiError:
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    cls = _BY_STATUS.get(status, ApiError)
    return cls(
        status,
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
        retry_after,
        body,
    )


class StreamInterrupted(TaleError):
    """An event stream broke and could not be resumed (reconnect attempts exhausted, or a stream
    that cannot be resumed, such as the one-shot ``execute``)."""

    def __init__(self, message: str, cause: Optional[BaseException] = None) -> None:
        super().__init__(message)
        self.cause = cause

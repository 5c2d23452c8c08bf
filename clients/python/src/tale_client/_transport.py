"""What the sync and async clients share around the wire: configuration, signing a built request,
the retry rule for 429/503 and the reconnect back-off."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import httpx

from ._signing import now_ms, signed_headers
from .errors import TaleError

DEFAULT_URL = "http://127.0.0.1:8003"
# Longer than the spawner's session create deadline (180 s by default).
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=240.0)
# The spawner sends a keepalive every 20 s: three missed ones mean the connection is dead.
DEFAULT_STREAM_READ_TIMEOUT = 65.0


@dataclass(frozen=True)
class RetryPolicy:
    """Refusals that say when to come back (429 / 503 with ``retry-after``) are retried — they
    were refused before any work was done, so retrying is safe for every method. A wait longer
    than ``max_wait`` seconds, or more than ``max_retries`` refusals, raises the ``ApiError``."""

    max_retries: int = 3
    max_wait: float = 30.0

    def wait_for(self, status: int, retry_after: Optional[float], attempt: int) -> Optional[float]:
        if status not in (429, 503) or retry_after is None:
            return None
        if attempt >= self.max_retries or retry_after > self.max_wait:
            return None
        return max(retry_after, 0.0)


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a broken event stream is resumed: up to ``max_attempts`` reconnects in a row without a
    new event, waiting ``base_delay`` doubling to ``max_delay`` seconds between them."""

    max_attempts: int = 10
    base_delay: float = 0.05
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay, self.base_delay * (2**attempt)))


def retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_body(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


@dataclass
class Settings:
    base_url: str
    token: str
    clock: Callable[[], int]
    retry: RetryPolicy
    reconnect: ReconnectPolicy
    stream_read_timeout: float

    @staticmethod
    def make(
        base_url: Optional[str],
        token: Optional[str],
        clock: Optional[Callable[[], int]],
        retry: Optional[RetryPolicy],
        reconnect: Optional[ReconnectPolicy],
        stream_read_timeout: float,
    ) -> "Settings":
        token = token if token is not None else os.environ.get("SANDBOX_TOKEN")
        if not token:
            raise TaleError("no token: pass token= or set SANDBOX_TOKEN (the spawner's HMAC key)")
        base_url = base_url or os.environ.get("TALE_SPAWNER_URL") or DEFAULT_URL
        return Settings(
            base_url=base_url.rstrip("/"),
            token=token,
            clock=clock or now_ms,
            retry=retry or RetryPolicy(),
            reconnect=reconnect or ReconnectPolicy(),
            stream_read_timeout=stream_read_timeout,
        )

    def sign(self, request: httpx.Request) -> None:
        """Signs the request exactly as it will go out (path and query as encoded on the wire)."""
        path = request.url.raw_path.decode("ascii")
        headers: Dict[str, str] = signed_headers(
            self.token, request.method, path, request.content, self.clock
        )
        request.headers.update(headers)

    def stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(30.0, read=self.stream_read_timeout)

"""The spawner's request signature: HMAC-SHA256 keyed with ``SANDBOX_TOKEN``.

Signed string: ``METHOD\\npath?query\\ntimestamp\\nnonce\\nsha256hex(body)``. A fresh random nonce is
always sent: without it, two identical requests in the same millisecond (two equal keystrokes to
stdin) would carry the same signature and the second would be refused as a replay.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Callable, Dict, Optional

SIGNATURE_HEADER = "x-tale-sandbox-signature"
TIMESTAMP_HEADER = "x-tale-sandbox-timestamp"
NONCE_HEADER = "x-tale-sandbox-nonce"


def now_ms() -> int:
    return int(time.time() * 1000)


def signing_string(
    method: str, path_and_query: str, timestamp_ms: str, nonce: Optional[str], body: bytes
) -> str:
    body_hash = hashlib.sha256(body).hexdigest()
    parts = [method.upper(), path_and_query, timestamp_ms]
    if nonce:
        parts.append(nonce)
    parts.append(body_hash)
    return "\n".join(parts)


def sign(
    token: str, method: str, path_and_query: str, timestamp_ms: str, nonce: Optional[str], body: bytes
) -> str:
    """Lowercase hex HMAC-SHA256 of the signing string."""
    message = signing_string(method, path_and_query, timestamp_ms, nonce, body)
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def signed_headers(
    token: str,
    method: str,
    path_and_query: str,
    body: bytes,
    clock: Callable[[], int] = now_ms,
) -> Dict[str, str]:
    """The three headers of a signed request, with a fresh nonce."""
    timestamp = str(clock())
    nonce = secrets.token_hex(16)
    return {
        SIGNATURE_HEADER: sign(token, method, path_and_query, timestamp, nonce, body),
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
    }

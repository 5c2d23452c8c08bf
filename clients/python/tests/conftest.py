"""Fixtures of the live tests: a real spawner (started by tests/client_libraries.rs) reached
directly and through a proxy that cuts every connection after a few kilobytes."""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tale_client import Client  # noqa: E402

LIVE_VARS = ("TALE_TEST_SPAWNER_URL", "TALE_TEST_CUT_PROXY_URLS", "SANDBOX_TOKEN")


def _live() -> None:
    missing = [v for v in LIVE_VARS if not os.environ.get(v)]
    if missing:
        pytest.skip(f"live spawner not configured ({', '.join(missing)} unset); run tests/client_libraries.rs")


@pytest.fixture
def spawner_url() -> str:
    _live()
    return os.environ["TALE_TEST_SPAWNER_URL"]


@pytest.fixture
def cut_proxy_urls() -> List[str]:
    """Proxies that cut each connection after a few KiB (more on each later connection): one per
    test that streams through one, so that every such test sees fresh, small thresholds."""
    _live()
    return os.environ["TALE_TEST_CUT_PROXY_URLS"].split(",")


@pytest.fixture
def split_proxy_url() -> str:
    """A proxy that cuts a connection right after the frame carrying a new `split-<n>:` marker."""
    _live()
    url = os.environ.get("TALE_TEST_SPLIT_PROXY_URL")
    if not url:
        pytest.skip("no split proxy configured (TALE_TEST_SPLIT_PROXY_URL)")
    return url


@pytest.fixture
def client(spawner_url: str) -> Iterator[Client]:
    with Client(spawner_url) as client:
        yield client


@pytest.fixture
def session(client: Client) -> Iterator[str]:
    """A fresh session, destroyed afterwards."""
    session_id = f"py-{secrets.token_hex(6)}"
    client.create_session(session_id, "py-tests")
    yield session_id
    client.delete_session(session_id)

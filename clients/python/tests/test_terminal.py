"""Against the real spawner (local backend): pty execs, resize and raw stdin, sync and async."""
from __future__ import annotations

import asyncio
import secrets
from typing import AsyncIterator, Iterator

import pytest

from tale_client import (
    AsyncClient,
    BadRequest,
    Client,
    Event,
    OutputEvent,
    PhaseEvent,
    TerminalSize,
)

# Prints the terminal's size, waits for a line typed at it, prints the size again.
STTY_TWICE = "stty size; read line; stty size"
# Binary, not JSON, no newline: only raw stdin takes it.
RAW_BYTES = b"\x00\x01 raw \xe2\x82\xac\xff no newline"


def read_until(events: Iterator[Event], text: str, needle: str) -> str:
    """Output text read from `events` (appended to `text`) until it contains `needle`."""
    for event in events:
        if isinstance(event, OutputEvent):
            text += event.text
            if needle in text:
                return text
    pytest.fail(f"the stream ended before {needle!r} appeared: {text!r}")


async def aread_until(events: AsyncIterator[Event], text: str, needle: str) -> str:
    async for event in events:
        if isinstance(event, OutputEvent):
            text += event.text
            if needle in text:
                return text
    pytest.fail(f"the stream ended before {needle!r} appeared: {text!r}")


def test_pty_exec_sees_its_resize(client: Client, session: str) -> None:
    """A pty exec reports the size it was started with, then the size a resize set; the keys that
    let it go on reach it through its raw stdin (a typed carriage return ends `read`); the exec
    list marks it as a terminal."""
    stream = client.exec(session, shell=STTY_TWICE, pty=TerminalSize(cols=80, rows=24), exec_id="tty1")
    events = iter(stream)
    text = read_until(events, "", "24 80")
    listed = [(e.exec_id, e.state, e.exit_code, e.pty) for e in client.list_execs(session)]
    assert listed == [("tty1", "running", None, True)]
    resized = client.resize(session, "tty1", 100, 30)
    assert (resized.ok, resized.reason) == (True, None)
    assert client.write_stdin(session, "tty1", b"\r").ok
    text = read_until(events, text, "30 100")
    assert text.index("24 80") < text.index("30 100")
    for _ in events:
        pass
    assert stream.result is not None and stream.result.exit_code == 0
    assert [(e.state, e.exit_code) for e in client.list_execs(session)] == [("exited", 0)]
    # The exec is gone now: a resize names why it did nothing.
    assert client.resize(session, "tty1", 90, 20).reason == "NOT_FOUND"


def test_raw_stdin_bytes_without_newline_reach_cat(client: Client, session: str) -> None:
    """Binary bytes with no newline reach `cat` as written (its output shows them before EOF)."""
    stream = client.exec(session, ["cat"], stdin_mode="raw", exec_id="rawcat")
    events = iter(stream)
    assert isinstance(next(events), PhaseEvent)
    assert client.write_stdin(session, "rawcat", RAW_BYTES).ok
    read_until(events, "", "no newline")
    assert client.write_stdin(session, "rawcat", eof=True).ok
    for _ in events:
        pass
    assert stream.result is not None and stream.result.exit_code == 0
    assert stream.result.stdout == RAW_BYTES


def test_terminal_refusals(client: Client, session: str) -> None:
    """A resize of a pipe exec, a size out of bounds, a pty with held stdin: each refused, typed."""
    stream = client.exec(session, ["cat"], stdin_mode="raw", exec_id="pipes")
    events = iter(stream)
    next(events)
    assert [(e.exec_id, e.pty) for e in client.list_execs(session)] == [("pipes", False)]
    refused = client.resize(session, "pipes", 80, 24)
    assert (refused.ok, refused.reason) == (False, "NOT_A_TERMINAL")
    with pytest.raises(BadRequest) as too_wide:
        client.resize(session, "pipes", 1001, 24)
    assert too_wide.value.code == "bad_request"
    assert client.cancel(session, "pipes").killed
    for _ in events:
        pass
    with pytest.raises(BadRequest):
        client.run(session, ["true"], pty=TerminalSize(80, 24), stdin_mode="hold")
    with pytest.raises(BadRequest):
        client.exec(session, ["true"], hold_stdin=True, stdin_mode="raw")


def test_async_pty_resize_and_raw_stdin(spawner_url: str) -> None:
    async def main() -> None:
        sid = f"py-atty-{secrets.token_hex(4)}"
        async with AsyncClient(spawner_url) as client:
            await client.create_session(sid, "py-tests")
            try:
                stream = client.exec(sid, shell=STTY_TWICE, pty=TerminalSize(cols=70, rows=20), exec_id="atty")
                events = stream.__aiter__()
                text = await aread_until(events, "", "20 70")
                assert [(e.exec_id, e.pty) for e in await client.list_execs(sid)] == [("atty", True)]
                assert (await client.resize(sid, "atty", 120, 40)).ok
                assert (await client.write_stdin(sid, "atty", b"\r")).ok
                await aread_until(events, text, "40 120")
                async for _ in events:
                    pass
                assert stream.result is not None and stream.result.exit_code == 0

                raw = client.exec(sid, ["cat"], stdin_mode="raw", exec_id="araw")
                raw_events = raw.__aiter__()
                assert isinstance(await raw_events.__anext__(), PhaseEvent)
                assert (await client.write_stdin(sid, "araw", RAW_BYTES)).ok
                await aread_until(raw_events, "", "no newline")
                assert (await client.write_stdin(sid, "araw", eof=True)).ok
                async for _ in raw_events:
                    pass
                assert raw.result is not None and raw.result.stdout == RAW_BYTES
            finally:
                await client.delete_session(sid)

    asyncio.run(main())

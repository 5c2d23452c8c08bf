"""Unit tests without a spawner: signing vectors, the SSE parser, the resume cursor, and the
client's behaviour against a scripted HTTP server (resume after a cut, gaps, retry-after)."""
from __future__ import annotations

import asyncio
import json

import pytest

from fake_server import FakeServer, json_reply, sse_complete, sse_then_cut
from tale_client import (
    AsyncClient,
    Client,
    GapEvent,
    OutputEvent,
    PhaseEvent,
    ResultEvent,
    RetryPolicy,
    TooManyRequests,
    Unavailable,
    sign,
    signing_string,
)
from tale_client._stream import Cursor, SseFrame, SseParser

TOKEN = "unit-token"


def frame(name: str, data: object, id: object = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {id}\n" if id is not None else "")
    return (head + "data: " + json.dumps(data) + "\n\n").encode()


def test_signature_matches_the_server_vectors() -> None:
    """The same vectors as the spawner's own hmac tests (computed independently)."""
    assert (
        sign("k", "GET", "/v1/sessions", "1000", None, b"")
        == "b852693acbd1b6e3623f1d704c47ba581fa97ca66f71d37016f7d8bbb5e64aed"
    )
    assert signing_string("POST", "/p", "5", "n", b"{}") == (
        "POST\n/p\n5\nn\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )


def test_session_info_reads_reachable_as_sent() -> None:
    from tale_client.types import SessionInfo

    base = {"sessionId": "s", "organizationId": "o"}
    assert SessionInfo.from_json(base).reachable is True
    assert SessionInfo.from_json({**base, "reachable": False}).reachable is False
    assert SessionInfo.from_json({**base, "reachable": None}).reachable is None


def test_sse_parser_survives_any_chunking() -> None:
    """Frames split anywhere (even inside a UTF-8 character) parse to the same events."""
    stream = frame("stdout", {"text": "é😀", "seq": 3}, 3) + b": keepalive\n\n" + frame("gap", {"fromSeq": 4, "toSeq": 6})
    for size in (1, 2, 5, len(stream)):
        parser = SseParser()
        frames = [f for i in range(0, len(stream), size) for f in parser.feed(stream[i : i + size])]
        assert [(f.event, f.id) for f in frames] == [("stdout", "3"), ("gap", None)]
        assert json.loads(frames[0].data)["text"] == "é😀"


def test_cursor_drops_repeats_clips_gaps_and_resumes_a_few_characters_early() -> None:
    """Resume point: far enough back for 5 characters of each stream; repeats are dropped; a gap
    partly delivered already is clipped, one wholly delivered is dropped."""
    cursor = Cursor()
    out = lambda seq, text, name="stdout": SseFrame(name, str(seq), json.dumps({"text": text, "seq": seq}))  # noqa: E731
    assert isinstance(cursor.accept(SseFrame("phase", "1", '{"phase":"running"}')), PhaseEvent)
    assert cursor.resume_id() == "1"
    assert cursor.accept(out(2, "ab")) == OutputEvent("stdout", "ab", 2)
    assert cursor.accept(out(3, "cd")) == OutputEvent("stdout", "cd", 3)
    assert cursor.resume_id() == "1", "only 4 characters so far: replay from the stream's start"
    assert cursor.accept(out(4, "efgh")) is not None
    assert cursor.resume_id() == "2", "chunks 3 and 4 hold 6 characters"
    assert cursor.accept(out(5, "x", "stderr")) is not None
    assert cursor.resume_id() == "2"
    assert cursor.accept(out(3, "cd")) is None, "a replayed chunk is dropped"
    assert cursor.accept(SseFrame("gap", None, '{"fromSeq":2,"toSeq":5}')) is None
    assert cursor.accept(SseFrame("gap", None, '{"fromSeq":2,"toSeq":9}')) == GapEvent(6, 9)
    assert cursor.last_seq == 9
    # The end-of-stream flush (no id) is delivered once even when replayed.
    flush = SseFrame("stdout", None, '{"text":"\\ufffd","seq":10}')
    assert cursor.accept(flush) is not None
    assert cursor.accept(flush) is None
    assert isinstance(cursor.accept(SseFrame("result", "10", '{"status":"completed","exitCode":0}')), ResultEvent)
    assert cursor.finished


def test_agent_cursor_resumes_at_the_last_id() -> None:
    cursor = Cursor(agent=True)
    assert cursor.resume_id() is None
    cursor.accept(SseFrame("stdout", "4", '{"text":"{}\\n","seq":4}'))
    assert cursor.resume_id() == "4"
    cursor.accept(SseFrame("agent", "4.2", '{"type":"text","text":"hi"}'))
    assert cursor.resume_id() == "4.2"
    assert cursor.accept(SseFrame("agent", "4.1", '{"type":"text","text":"old"}')) is None


def _script_cut_then_gap() -> list:
    first = frame("phase", {"phase": "running"}, 1) + frame("stdout", {"text": "héllo ", "seq": 2}, 2)
    # The cut lands in the middle of the next frame.
    first += frame("stdout", {"text": "lost?", "seq": 3}, 3)[:12]
    replay = (
        frame("stdout", {"text": "héllo ", "seq": 2}, 2)
        + frame("gap", {"fromSeq": 3, "toSeq": 5})
        + frame("stdout", {"text": "world", "seq": 6}, 6)
        + frame("result", {"status": "completed", "exitCode": 0, "durationMs": 1, "stdoutBase64": "",
                           "stderrBase64": "", "truncated": {"stdout": False, "stderr": False},
                           "reason": "completed"}, 7)
    )
    return [sse_then_cut(first), sse_complete(replay)]


def _check_resumed(server: FakeServer, events: list) -> None:
    assert [type(e).__name__ for e in events] == [
        "PhaseEvent", "OutputEvent", "GapEvent", "OutputEvent", "ResultEvent"
    ]
    assert events[2] == GapEvent(3, 5), "the gap reaches the caller, typed"
    assert "".join(e.text for e in events if isinstance(e, OutputEvent)) == "héllo world"
    start, attach = server.seen
    assert (start.method, start.path) == ("POST", "/v1/sessions/s1/exec")
    assert (attach.method, attach.path) == ("GET", "/v1/sessions/s1/exec/e1/attach")
    assert attach.headers["last-event-id"] == "1", "resumed before the last chunk (6 characters)"
    for seen in server.seen:
        expected = sign(TOKEN, seen.method, seen.path, seen.headers["x-tale-sandbox-timestamp"],
                        seen.headers["x-tale-sandbox-nonce"], seen.body)
        assert seen.headers["x-tale-sandbox-signature"] == expected
        assert len(seen.headers["x-tale-sandbox-nonce"]) == 32


def test_stream_resumes_after_a_cut_and_reports_the_gap() -> None:
    """A connection cut mid-frame is resumed by an attach; the repeat is dropped, the gap typed."""
    with FakeServer(_script_cut_then_gap()) as server, Client(server.url, TOKEN) as client:
        stream = client.exec("s1", ["true"], exec_id="e1")
        events = list(stream)
        assert stream.reconnects == 1
        assert stream.result is not None and stream.result.exit_code == 0
        _check_resumed(server, events)


def test_async_stream_resumes_after_a_cut_and_reports_the_gap() -> None:
    async def main() -> list:
        async with AsyncClient(server.url, TOKEN) as client:
            stream = client.exec("s1", ["true"], exec_id="e1")
            events = [e async for e in stream]
            assert stream.reconnects == 1
            return events

    with FakeServer(_script_cut_then_gap()) as server:
        _check_resumed(server, asyncio.run(main()))


def test_create_in_progress_is_waited_out() -> None:
    """A create answered 503 ``create_in_progress`` (an earlier create of the id made its container
    and crashed before starting it) is sent again after ``retry-after`` and returns the created
    session; a wait beyond the policy raises ``Unavailable`` with the code and the wait."""
    in_progress = json.dumps({"error": "create_in_progress", "message": "retry in 1 s"}).encode()
    created = json.dumps({"session": {"sessionId": "a", "organizationId": "o", "state": "ready"}}).encode()
    script = [json_reply(503, in_progress, "retry-after: 0\r\n"), json_reply(201, created)]
    with FakeServer(script) as server, Client(server.url, TOKEN) as client:
        session = client.create_session("a", "o")
        assert (session.session_id, session.state) == ("a", "ready")
        assert [s.path for s in server.seen] == ["/v1/sessions", "/v1/sessions"]
    script = [json_reply(503, in_progress, "retry-after: 25\r\n")]
    with FakeServer(script) as server, Client(server.url, TOKEN, retry=RetryPolicy(max_wait=5)) as client:
        with pytest.raises(Unavailable) as err:
            client.create_session("a", "o")
        assert (err.value.code, err.value.retry_after) == ("create_in_progress", 25.0)


def test_retry_after_is_honoured_and_bounded() -> None:
    """503/429 with retry-after are retried (re-signed, new nonce); beyond the policy they raise
    with the code and the wait, decided by status and code only."""
    body = json.dumps({"sessions": []}).encode()
    busy = json.dumps({"error": "overloaded", "message": "whatever the text"}).encode()
    script = [json_reply(503, busy, "retry-after: 0\r\n"), json_reply(429, busy, "retry-after: 0\r\n"),
              json_reply(200, body)]
    with FakeServer(script) as server, Client(server.url, TOKEN) as client:
        assert client.list_sessions() == []
        nonces = {s.headers["x-tale-sandbox-nonce"] for s in server.seen}
        assert len(server.seen) == 3 and len(nonces) == 3
    script = [json_reply(429, json.dumps({"error": "session_quota"}).encode(), "retry-after: 100\r\n")]
    with FakeServer(script) as server, Client(server.url, TOKEN, retry=RetryPolicy(max_wait=5)) as client:
        with pytest.raises(TooManyRequests) as err:
            client.create_session("a", "o")
        assert (err.value.code, err.value.retry_after) == ("session_quota", 100.0)
    with FakeServer([json_reply(503, busy)]) as server, Client(server.url, TOKEN) as client:
        with pytest.raises(Unavailable) as unavailable:
            client.get_session("a")
        assert unavailable.value.code == "overloaded" and unavailable.value.retry_after is None

"""Against the real spawner (local backend): every route, resumable streams through a proxy that
cuts connections mid-stream, the nonce, typed errors, agent runs with the real Claude Code CLI."""
from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from pathlib import Path
from typing import Dict, List

import httpx
import pytest

from tale_client import (
    AgentEvent,
    AsyncClient,
    Client,
    Conflict,
    GapEvent,
    NotFound,
    OutputEvent,
    PhaseEvent,
    ResultEvent,
    StageFile,
    Unauthorized,
    signing_string,
)
from tale_client._signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
import hashlib
import hmac

# Output written line by line with multi-byte characters, some cut in two by separate writes, so
# that connection cuts land inside frames and between the halves of a character.
LINES = 300
PRODUCER = (
    f"for i in $(seq 1 {LINES}); do "
    "printf 'line %04d ünïcödé € ' \"$i\"; "
    "if [ $((i % 7)) = 0 ]; then printf '\\360\\237'; sleep 0.003; printf '\\230\\200'; fi; "
    "printf '😀\\n'; "
    "if [ $((i % 50)) = 0 ]; then echo \"stderr $i\" >&2; fi; "
    "sleep 0.002; done"
)


# Held stdin (`hold_stdin`) takes one JSON line per write; raw stdin is tested in test_terminal.py.
LINE_ONE = '{"line":1}\n'
KEY = '{"key":"k"}\n'


def expected_stdout() -> str:
    return "".join(
        f"line {i:04d} ünïcödé € " + ("😀" if i % 7 == 0 else "") + "😀\n" for i in range(1, LINES + 1)
    )


def expected_stderr() -> str:
    return "".join(f"stderr {i}\n" for i in range(50, LINES + 1, 50))


def test_session_lifecycle(client: Client) -> None:
    """create / get / list / pin / env / duplicate / delete if_idle / delete / not found."""
    sid = f"py-life-{secrets.token_hex(4)}"
    org = f"org-{secrets.token_hex(4)}"
    info = client.create_session(sid, org, env={"GREETING": "hi"}, idle_timeout_ms=600_000)
    try:
        assert (info.session_id, info.organization_id, info.state) == (sid, org, "ready")
        assert info.idle_timeout_ms == 600_000
        with pytest.raises(Conflict) as dup:
            client.create_session(sid, org)
        assert dup.value.code == "duplicate"
        assert client.get_session(sid).session_id == sid
        assert [s.session_id for s in client.list_sessions(org)] == [sid]
        assert client.pin_session(sid, True).pinned is True
        assert client.get_session(sid).pinned is True
        assert client.pin_session(sid, False).pinned is False
        env = client.patch_env(sid, set={"EXTRA": "x y", "PATH": "/nope"}, unset=["GREETING"])
        assert env.ok and env.denied == ["PATH"]
        out = client.run(sid, shell='echo "${GREETING:-unset} $EXTRA"')
        assert out.stdout == "unset x y\n" and out.exit_code == 0
        # A running exec makes the session busy for an if_idle delete.
        stream = client.exec(sid, ["sleep", "30"], exec_id="sleeper")
        events = iter(stream)
        assert isinstance(next(events), PhaseEvent)
        busy = client.delete_session(sid, if_idle=True)
        assert (busy.destroyed, busy.busy) == (False, True)
        assert client.cancel(sid, "sleeper").killed is True
        rest = list(events)
        assert isinstance(rest[-1], ResultEvent) and rest[-1].result.status == "cancelled"
    finally:
        gone = client.delete_session(sid)
    assert (gone.destroyed, gone.busy) == (True, False)
    with pytest.raises(NotFound) as missing:
        client.get_session(sid)
    assert (missing.value.status, missing.value.code) == (404, "not_found")


def test_exec_result_stdin_status_and_cancel(client: Client, session: str) -> None:
    out = client.run(session, shell="echo out; echo err >&2; exit 3", exec_id="e3")
    assert (out.stdout, out.stderr, out.exit_code) == ("out\n", "err\n", 3)
    assert out.result is not None
    assert (out.result.status, out.result.reason) == ("failed", "failed")
    assert (out.result.stdout, out.result.stderr) == (b"out\n", b"err\n")
    assert client.exec_status(session, "e3").state == "exited"
    assert client.exec_status(session, "e3").exit_code == 3
    assert client.exec_status(session, "never-ran").state == "gone"
    # stdin given up front, and held stdin written later.
    assert client.run(session, ["cat"], stdin=b"given\n").stdout == "given\n"
    stream = client.exec(session, ["cat"], hold_stdin=True, exec_id="cat1")
    events = iter(stream)
    assert isinstance(next(events), PhaseEvent)
    assert client.exec_status(session, "cat1").state == "running"
    assert client.write_stdin(session, "cat1", LINE_ONE).ok
    assert client.write_stdin(session, "cat1", eof=True).ok
    text = "".join(e.text for e in events if isinstance(e, OutputEvent))
    assert text == LINE_ONE and stream.result is not None and stream.result.exit_code == 0
    refused = client.write_stdin(session, "cat1", LINE_ONE)
    assert (refused.ok, refused.reason) in {(False, "NOT_FOUND"), (False, "STDIN_CLOSED")}


def test_identical_stdin_bodies_in_one_millisecond_are_both_accepted(spawner_url: str, session: str) -> None:
    """Same body, same timestamp (a frozen clock): only the nonce tells them apart. Without it the
    second is a replay (checked with hand-signed nonce-less requests, so this test can fail)."""
    frozen = int(time.time() * 1000)
    with Client(spawner_url, clock=lambda: frozen) as client:
        stream = client.exec(session, ["cat"], hold_stdin=True, exec_id="keys")
        events = iter(stream)
        next(events)
        first = client.write_stdin(session, "keys", KEY)
        second = client.write_stdin(session, "keys", KEY)
        assert first.ok and second.ok
        # The same request without a nonce: the second copy is refused as a replay.
        body = b'{"b64":"' + base64.b64encode(KEY.encode()) + b'"}'
        path = f"/v1/sessions/{session}/exec/keys/stdin"
        token = os.environ["SANDBOX_TOKEN"]
        stamp = str(int(time.time() * 1000))
        signature = hmac.new(token.encode(), signing_string("POST", path, stamp, None, body).encode(),
                             hashlib.sha256).hexdigest()
        headers = {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: stamp, "content-type": "application/json"}
        statuses = [httpx.post(spawner_url + path, content=body, headers=headers).status_code for _ in range(2)]
        assert statuses == [200, 401]
        assert client.write_stdin(session, "keys", eof=True).ok
        text = "".join(e.text for e in events if isinstance(e, OutputEvent))
        assert text == KEY * 3


def test_stream_resumes_through_cut_connections_exactly_once(cut_proxy_urls: List[str], session: str) -> None:
    """Every connection through the proxy is cut after a few KiB: the stream resumes each time and
    the whole output arrives exactly once, characters cut by a resume point included."""
    with Client(cut_proxy_urls[0]) as client:
        stream = client.exec(session, shell=PRODUCER, exec_id="producer", collect_output=False)
        out = stream.collect()
    assert stream.reconnects >= 3, f"the proxy cut the stream only {stream.reconnects} times"
    assert out.gaps == []
    assert out.stdout == expected_stdout()
    assert out.stderr == expected_stderr()
    assert out.result is not None and out.result.exit_code == 0
    # Reattaching later (also through cuts) replays the same output.
    with Client(cut_proxy_urls[0]) as client:
        replay = client.attach(session, "producer").collect()
    assert replay.stdout == expected_stdout() and replay.stderr == expected_stderr()


def test_files_and_credentials(client: Client, session: str) -> None:
    blob = bytes(range(256)) * 4
    staged = client.stage_files(session, [StageFile("dir/blob.bin", content=blob), StageFile("a.txt", content="A")])
    assert sorted((f.path, f.bytes) for f in staged.staged) == [("a.txt", 1), ("dir/blob.bin", 1024)]
    assert client.read_file(session, "dir/blob.bin") == blob
    names = {(e.name, e.type) for e in client.list_files(session)}
    assert {("a.txt", "file"), ("dir", "dir")} <= names
    assert [e.size for e in client.list_files(session, "dir")] == [1024]
    deleted = client.delete_files(session, ["a.txt", "missing.txt"])
    assert sorted(deleted.deleted) == ["a.txt", "missing.txt"]
    with pytest.raises(NotFound):
        client.read_file(session, "a.txt")
    granted = client.grant_git_credential(session, "git.example:8443", "bot", "s3cret")
    assert granted.ok
    assert client.revoke_git_credential(session, "git.example:8443").existed is True
    assert client.revoke_git_credential(session, "git.example:8443").existed is False


def _pattern(length: int, seed: int) -> bytes:
    """Bytes no two chunks of which are alike, so a misplaced chunk cannot pass."""
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(length)


def _make_tree(root: Path) -> None:
    (root / "src" / "deep" / "er").mkdir(parents=True)
    (root / "README.md").write_bytes(b"# hi\n")
    (root / "src" / "empty").write_bytes(b"")
    (root / "src" / "one-chunk.bin").write_bytes(_pattern(1024 * 1024, 2))
    (root / "src" / "deep" / "two.bin").write_bytes(_pattern(2 * 1024 * 1024 + 1, 3))
    (root / "src" / "deep" / "er" / "café.txt").write_text("café\n", encoding="utf-8")


def _tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


BIG = 5 * 1024 * 1024 + 7


def test_upload_and_download_of_any_size(client: Client, session: str, tmp_path: Path) -> None:
    big = _pattern(BIG, 1)
    (tmp_path / "big.bin").write_bytes(big)
    copied = client.upload(session, str(tmp_path / "big.bin"), "in/big.bin")
    assert (copied.files, copied.bytes) == (1, BIG)
    assert [(e.name, e.size) for e in client.list_files(session, "in")] == [("big.bin", BIG)]
    assert client.download(session, "in/big.bin", str(tmp_path / "big.down")).bytes == BIG
    assert (tmp_path / "big.down").read_bytes() == big
    _make_tree(tmp_path / "up")
    assert client.upload(session, str(tmp_path / "up"), "tree").files == 5
    assert client.download(session, "tree", str(tmp_path / "back")).files == 5
    assert _tree(tmp_path / "back") == _tree(tmp_path / "up")
    with pytest.raises(NotFound):
        client.download(session, "nope.bin", str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists(), "no half-written file is left"


def test_async_upload_and_download_of_any_size(spawner_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        sid = f"py-acp-{secrets.token_hex(4)}"
        async with AsyncClient(spawner_url) as client:
            await client.create_session(sid, "py-tests")
            try:
                big = _pattern(BIG, 4)
                (tmp_path / "big.bin").write_bytes(big)
                assert (await client.upload(sid, str(tmp_path / "big.bin"), "big.bin")).bytes == BIG
                await client.download(sid, "big.bin", str(tmp_path / "big.down"))
                assert (tmp_path / "big.down").read_bytes() == big
                _make_tree(tmp_path / "up")
                await client.upload(sid, str(tmp_path / "up"), "tree")
                await client.download(sid, "tree", str(tmp_path / "back"))
                assert _tree(tmp_path / "back") == _tree(tmp_path / "up")
            finally:
                await client.delete_session(sid)

    asyncio.run(main())


def test_one_shot_execute(client: Client) -> None:
    out = client.execute(shell="cat in.txt; echo", files=[StageFile("in.txt", content="staged")]).collect()
    assert (out.stdout, out.exit_code) == ("staged\n", 0)


def test_wrong_token_is_unauthorized(spawner_url: str) -> None:
    with Client(spawner_url, "not-the-token") as client:
        with pytest.raises(Unauthorized) as err:
            client.list_sessions()
    assert err.value.code == "unauthorized"


def test_async_client(spawner_url: str, cut_proxy_urls: List[str]) -> None:
    async def main() -> None:
        sid = f"py-async-{secrets.token_hex(4)}"
        async with AsyncClient(spawner_url) as client, AsyncClient(cut_proxy_urls[1]) as cut:
            await client.create_session(sid, "py-tests")
            try:
                stream = cut.exec(sid, shell=PRODUCER, exec_id="aprod", collect_output=False)
                out = await stream.collect()
                assert stream.reconnects >= 3
                assert (out.stdout, out.stderr, out.exit_code) == (expected_stdout(), expected_stderr(), 0)
                held = client.exec(sid, ["cat"], hold_stdin=True, exec_id="acat")
                events = held.__aiter__()
                assert isinstance(await events.__anext__(), PhaseEvent)
                assert (await client.write_stdin(sid, "acat", LINE_ONE)).ok
                assert (await client.write_stdin(sid, "acat", eof=True)).ok
                rest = [e async for e in events]
                assert "".join(e.text for e in rest if isinstance(e, OutputEvent)) == LINE_ONE
                assert (await client.exec_status(sid, "acat")).state == "exited"
                await client.write_file(sid, "f.txt", "data")
                assert await client.read_file(sid, "f.txt") == b"data"
                assert (await client.get_session(sid)).session_id == sid
            finally:
                assert (await client.delete_session(sid)).destroyed

    asyncio.run(main())


def test_agent_run_through_cut_connections(cut_proxy_urls: List[str], client: Client) -> None:
    """The real Claude Code CLI against the scripted model: normalized events resume through cuts
    with no repeat, steering adds a turn, EOF ends it, and a fresh attach yields the same events."""
    model_url = os.environ.get("TALE_TEST_MODEL_URL")
    gateway_token = os.environ.get("TALE_TEST_GATEWAY_TOKEN")
    if not model_url or not gateway_token:
        pytest.skip("no fake model configured (TALE_TEST_MODEL_URL)")
    sid = f"py-agent-{secrets.token_hex(4)}"
    client.create_session(sid, "py-tests", profile="agent")
    try:
        with Client(cut_proxy_urls[2]) as cut:
            stream = cut.start_agent_run(
                sid, agent="claude-code", prompt="Write the proof file, then say done.",
                gateway_token=gateway_token, gateway_base_url=model_url, model="tale-e2e-model",
                max_turns=5, exec_id="agent1", timeout_ms=120_000,
            )
            agent_events = []
            results = 0
            for event in stream:
                if isinstance(event, AgentEvent):
                    agent_events.append(event)
                    if event.type == "result":
                        results += 1
                        if results == 1:
                            assert cut.steer_agent_run(sid, "agent1", agent="claude-code", text="STEER: more").ok
                        elif results == 2:
                            assert cut.steer_agent_run(sid, "agent1", agent="claude-code", eof=True).ok
            assert stream.result is not None and stream.result.exit_code == 0
            types = [e.type for e in agent_events]
            assert types[0] == "run-started" and "tool-use" in types and types.count("result") == 2
            ids = [e.id for e in agent_events]
            assert len(ids) == len(set(ids)), "no agent event twice"
            replay = cut.attach_agent_run(sid, "agent1", agent="claude-code").collect()
            assert [(e.id, e.data) for e in replay.agent_events] == [(e.id, e.data) for e in agent_events]
        assert client.read_file(sid, "proof.txt") == b"tale-was-here\n"
    finally:
        client.delete_session(sid)


def test_a_character_cut_at_the_resume_point_arrives_whole(split_proxy_url: str, session: str) -> None:
    """The proxy cuts right after the frame that holds the first half of a 4-byte character: the
    resumed connection must still deliver the character whole (a resume at the last seq would
    hand the spawner's fresh decoder a bare second half: two U+FFFD)."""
    with Client(split_proxy_url) as client:
        for attempt in range(5):
            marker = f"split-{attempt}:"
            shell = f"printf '{marker}\\360\\237'; sleep 0.3; printf '\\230\\200 done\\n'"
            stream = client.exec(session, shell=shell, exec_id=f"split{attempt}", collect_output=False)
            outputs = [e for e in stream if isinstance(e, OutputEvent)]
            assert "".join(e.text for e in outputs) == f"{marker}😀 done\n"
            assert stream.reconnects == 1
            if any(e.text == marker for e in outputs):
                return  # the halves came as two chunks and the cut fell between them
    pytest.fail("runnerd never read the two halves of the character separately")

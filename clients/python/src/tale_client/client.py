"""The synchronous client."""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, TypeVar, Union

import httpx

from . import _copy
from . import _routes as routes
from ._routes import Call, StreamCall
from ._stream import Cursor, SseParser
from ._transport import (
    DEFAULT_STREAM_READ_TIMEOUT,
    DEFAULT_TIMEOUT,
    ReconnectPolicy,
    RetryPolicy,
    Settings,
    parse_body,
    retry_after,
)
from .errors import ApiError, NotFound, StreamInterrupted, api_error
from .types import (
    AgentEvent,
    CancelResult,
    CopyResult,
    CredentialResult,
    DeleteResult,
    DestroyResult,
    DirEntry,
    EnvResult,
    ErrorEvent,
    Event,
    ExecOutput,
    ExecResult,
    ExecStatus,
    ExecSummary,
    GapEvent,
    Json,
    OutputEvent,
    PinResult,
    ResizeResult,
    ResultEvent,
    SessionInfo,
    StageFile,
    StageResult,
    StdinMode,
    StdinResult,
    TerminalSize,
)

T = TypeVar("T")


class ExecStream:
    """The events of one exec (or agent run), in order, each exactly once.

    Iterate it (or call :meth:`collect`). A connection that drops mid-stream is resumed
    transparently by an attach (``Last-Event-ID``); events already delivered are not repeated, and
    output the session's journal no longer holds arrives as a :class:`GapEvent`. The stream ends
    after the ``ResultEvent`` (or an ``ErrorEvent``). Closing it early leaves the exec running.
    """

    def __init__(
        self,
        client: "Client",
        session_id: str,
        exec_id: str,
        first: Optional[StreamCall],
        resume: Optional[Callable[[], StreamCall]],
        cursor: Cursor,
    ) -> None:
        self.session_id = session_id
        self.exec_id = exec_id
        self.result: Optional[ExecResult] = None
        self.reconnects = 0
        self._client = client
        self._first: Optional[StreamCall] = first
        self._resume = resume
        self._cursor = cursor
        self._response: Optional[httpx.Response] = None

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def __iter__(self) -> Iterator[Event]:
        failures = 0
        connected = False
        try:
            while not self._cursor.finished:
                if not connected:
                    # The first connection: the start itself, or an attach at the cursor.
                    connected = True
                    if self._first is not None:
                        self._response = self._client._open(self._first, None)
                    elif self._resume is not None:
                        self._response = self._client._open(self._resume(), self._cursor.resume_id())
                else:
                    if self._resume is None:
                        raise StreamInterrupted(
                            f"the stream of {self.exec_id} broke and cannot be resumed"
                        )
                    if failures >= self._client._settings.reconnect.max_attempts:
                        raise StreamInterrupted(
                            f"the stream of {self.exec_id} broke {failures} times in a row"
                        )
                    time.sleep(self._client._settings.reconnect.delay(failures))
                    failures += 1
                    self.reconnects += 1
                    try:
                        self._response = self._client._open(self._resume(), self._cursor.resume_id())
                    except httpx.TransportError:
                        continue
                    except ApiError as err:
                        # The session's runnerd or the spawner is struggling: try again later.
                        if err.status in (502, 503):
                            continue
                        raise
                response = self._response
                if response is None:
                    raise StreamInterrupted(f"no connection to the stream of {self.exec_id}")
                parser = SseParser()
                try:
                    for chunk in response.iter_bytes():
                        for frame in parser.feed(chunk):
                            event = self._cursor.accept(frame)
                            if event is None:
                                continue
                            failures = 0
                            if isinstance(event, ResultEvent):
                                self.result = event.result
                            yield event
                            if self._cursor.finished:
                                return
                except httpx.TransportError:
                    pass
                finally:
                    self.close()
        finally:
            self.close()

    def collect(self) -> ExecOutput:
        """Reads the stream to its end: output text, gaps, agent events, result."""
        stdout: List[str] = []
        stderr: List[str] = []
        output = ExecOutput("", "", None, [])
        for event in self:
            if isinstance(event, OutputEvent):
                (stdout if event.stream == "stdout" else stderr).append(event.text)
            elif isinstance(event, GapEvent):
                output.gaps.append(event)
            elif isinstance(event, AgentEvent):
                output.agent_events.append(event)
            elif isinstance(event, ErrorEvent):
                output.error = event.message
        output.stdout, output.stderr, output.result = "".join(stdout), "".join(stderr), self.result
        return output


class Client:
    """Synchronous client of the tale spawner API. Every request is signed (with a nonce).

    ``base_url`` defaults to ``$TALE_SPAWNER_URL`` (else ``http://127.0.0.1:8003``), ``token`` to
    ``$SANDBOX_TOKEN``.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        stream_read_timeout: float = DEFAULT_STREAM_READ_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        reconnect: Optional[ReconnectPolicy] = None,
        clock: Optional[Callable[[], int]] = None,
        http: Optional[httpx.Client] = None,
    ) -> None:
        self._settings = Settings.make(base_url, token, clock, retry, reconnect, stream_read_timeout)
        self._http = http or httpx.Client(timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- plumbing ----

    def _build(self, method: str, path: str, body: Optional[bytes], last_event_id: Optional[str]) -> httpx.Request:
        headers = {"content-type": "application/json"} if body is not None else {}
        if last_event_id is not None:
            headers["last-event-id"] = last_event_id
        request = self._http.build_request(
            method, self._settings.base_url + path, content=body or b"", headers=headers
        )
        self._settings.sign(request)
        return request

    def _call(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            response = self._http.send(self._build(call.method, call.path, call.body, None))
            status = response.status_code
            if 200 <= status < 300 or status in call.answers:
                try:
                    return call.read(status, parse_body(response.content), response.content)
                except routes._NotAnAnswer:
                    pass
            wait = self._settings.retry.wait_for(status, retry_after(response), attempt)
            if wait is None:
                raise api_error(status, parse_body(response.content), retry_after(response))
            attempt += 1
            time.sleep(wait)

    def _open(self, call: StreamCall, last_event_id: Optional[str]) -> httpx.Response:
        attempt = 0
        while True:
            request = self._build(call.method, call.path, call.body, last_event_id)
            request.extensions["timeout"] = self._settings.stream_timeout().as_dict()
            response = self._http.send(request, stream=True)
            if response.status_code == 200:
                return response
            content = response.read()
            response.close()
            wait = self._settings.retry.wait_for(response.status_code, retry_after(response), attempt)
            if wait is None:
                raise api_error(response.status_code, parse_body(content), retry_after(response))
            attempt += 1
            time.sleep(wait)

    # ---- sessions ----

    def health(self) -> Json:
        """``GET /health`` (unauthenticated; signed anyway): ``{status, …}``, also when unhealthy."""
        return self._call(routes.health())

    def create_session(
        self,
        session_id: str,
        organization_id: str,
        *,
        profile: Optional[str] = None,
        ttl_ms: Optional[int] = None,
        idle_timeout_ms: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> SessionInfo:
        """Creates the session, or resumes it on its kept workspace (409 ``Conflict`` if live)."""
        return self._call(
            routes.create_session(session_id, organization_id, profile, ttl_ms, idle_timeout_ms, env)
        )

    def list_sessions(self, organization_id: Optional[str] = None) -> List[SessionInfo]:
        return self._call(routes.list_sessions(organization_id))

    def get_session(self, session_id: str) -> SessionInfo:
        return self._call(routes.get_session(session_id))

    def delete_session(self, session_id: str, *, if_idle: bool = False) -> DestroyResult:
        """Destroys the session and its workspace; ``if_idle`` refuses (``busy``) while execs run."""
        return self._call(routes.delete_session(session_id, if_idle))

    def pin_session(self, session_id: str, pinned: bool = True) -> PinResult:
        return self._call(routes.pin_session(session_id, pinned))

    def patch_env(
        self,
        session_id: str,
        set: Optional[Mapping[str, str]] = None,
        unset: Optional[Sequence[str]] = None,
    ) -> EnvResult:
        return self._call(routes.patch_env(session_id, set, unset))

    # ---- execs ----

    def exec(
        self,
        session_id: str,
        command: Optional[Sequence[str]] = None,
        *,
        shell: Optional[str] = None,
        exec_id: Optional[str] = None,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[Union[bytes, str]] = None,
        hold_stdin: bool = False,
        stdin_mode: Optional[StdinMode] = None,
        pty: Optional[TerminalSize] = None,
        timeout_ms: Optional[int] = None,
        collect_output: Optional[bool] = None,
    ) -> ExecStream:
        """Starts ``command`` (argv) or ``shell`` in the session; returns its resumable stream.

        ``hold_stdin`` is ``stdin_mode="hold"``; ``stdin_mode="raw"`` keeps stdin open for any
        bytes. ``pty`` runs it on a terminal of that size (its output all arrives as ``stdout``,
        its stdin is raw)."""
        exec_id = exec_id or routes.new_id("exec")
        body = routes.exec_body(
            exec_id, command, shell, cwd, env, stdin, hold_stdin, timeout_ms, collect_output,
            stdin_mode=stdin_mode, pty=pty,
        )
        return ExecStream(
            self,
            session_id,
            exec_id,
            routes.exec_start(session_id, body),
            lambda: routes.exec_attach(session_id, exec_id),
            Cursor(),
        )

    def run(self, session_id: str, command: Optional[Sequence[str]] = None, **options: Any) -> ExecOutput:
        """``exec`` read to its end."""
        with self.exec(session_id, command, **options) as stream:
            return stream.collect()

    def attach(self, session_id: str, exec_id: str, *, since_seq: int = 0) -> ExecStream:
        """Reattaches to an exec, replaying what follows ``since_seq``."""
        attach = lambda: routes.exec_attach(session_id, exec_id)  # noqa: E731
        return ExecStream(self, session_id, exec_id, None, attach, Cursor(since_seq=since_seq))

    def write_stdin(
        self,
        session_id: str,
        exec_id: str,
        data: Optional[Union[bytes, str]] = None,
        *,
        eof: bool = False,
    ) -> StdinResult:
        """Writes to an exec whose stdin is held (one JSON line per write) or raw (any bytes, at
        most 1 MiB per write; keys for a pty exec); ``eof`` closes its stdin."""
        return self._call(routes.stdin(session_id, exec_id, data, eof))

    def resize(self, session_id: str, exec_id: str, cols: int, rows: int) -> ResizeResult:
        """Sets a pty exec's terminal size (its foreground programs get SIGWINCH); ``ok`` false
        with ``NOT_FOUND`` / ``NOT_A_TERMINAL``, ``BadRequest`` for a size outside 1–1000."""
        return self._call(routes.resize(session_id, exec_id, cols, rows))

    def list_execs(self, session_id: str) -> List[ExecSummary]:
        """The session's live and retained execs, oldest start first."""
        return self._call(routes.list_execs(session_id))

    def cancel(self, session_id: str, exec_id: str) -> CancelResult:
        return self._call(routes.cancel(session_id, exec_id))

    def exec_status(self, session_id: str, exec_id: str) -> ExecStatus:
        """``running``, ``exited`` or ``gone`` (an unknown exec is ``gone``, not an error)."""
        return self._call(routes.exec_status(session_id, exec_id))

    def execute(
        self,
        command: Optional[Sequence[str]] = None,
        *,
        shell: Optional[str] = None,
        organization_id: Optional[str] = None,
        files: Optional[Sequence[StageFile]] = None,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[Union[bytes, str]] = None,
        timeout_ms: Optional[int] = None,
    ) -> ExecStream:
        """The one-shot run: a fresh session, optional files, one command, then the session is
        destroyed. Its session goes when the connection does, so this stream cannot be resumed."""
        body = routes.exec_body("run", command, shell, cwd, env, stdin, False, timeout_ms, None)
        if organization_id is not None:
            body["organizationId"] = organization_id
        if files:
            body["files"] = [f.to_json() for f in files]
        return ExecStream(self, "", "run", routes.execute(body), None, Cursor())

    # ---- files ----

    def stage_files(self, session_id: str, files: Sequence[StageFile]) -> StageResult:
        return self._call(routes.stage_files(session_id, files))

    def write_file(self, session_id: str, path: str, content: Union[bytes, str]) -> StageResult:
        return self.stage_files(session_id, [StageFile(path, content=content)])

    def delete_files(self, session_id: str, paths: Sequence[str]) -> DeleteResult:
        return self._call(routes.delete_files(session_id, paths))

    def list_files(self, session_id: str, path: str = ".") -> List[DirEntry]:
        return self._call(routes.list_files(session_id, path))

    def read_file(self, session_id: str, path: str) -> bytes:
        return self._call(routes.read_file(session_id, path))

    def upload(self, session_id: str, local_path: str, remote_path: str) -> CopyResult:
        """Copies a local file, or every file of a local directory tree, to ``remote_path`` in the
        session — any size, in chunks (symlinks, special files and empty directories are left
        out). A file appears at its path only once whole."""
        result = CopyResult()
        for local, remote in _copy.upload_plan(local_path, remote_path, result):
            with open(local, "rb") as file:
                for offset, data, last in _copy.chunks(file):
                    self._call(routes.write_chunk(session_id, remote, offset, data, last))
                    result.bytes += len(data)
            result.files += 1
        return result

    def download(self, session_id: str, remote_path: str, local_path: str) -> CopyResult:
        """Copies a session's file (into ``local_path``, or into it when it is a directory) or
        directory tree (as ``local_path``) to this machine — any size, in ranged reads."""
        result = CopyResult()
        try:
            entries = self.list_files(session_id, remote_path)
        except NotFound:
            self._download_file(session_id, remote_path, _copy.local_target(remote_path, local_path), result)
            return result
        self._download_tree(session_id, remote_path, local_path, entries, 0, result)
        return result

    def _download_tree(
        self, session_id: str, remote: str, local: str, entries: List[DirEntry], depth: int, result: CopyResult
    ) -> None:
        if depth >= _copy.MAX_DEPTH:
            raise ValueError(f"{remote}: deeper than {_copy.MAX_DEPTH} directories")
        os.makedirs(local, exist_ok=True)
        for entry in entries:
            child = _copy.join(remote, entry.name)
            if not _copy.safe_name(entry.name):
                result.skipped.append(child)
            elif entry.type == "file":
                self._download_file(session_id, child, os.path.join(local, entry.name), result)
            elif entry.type == "dir":
                children = self.list_files(session_id, child)
                self._download_tree(session_id, child, os.path.join(local, entry.name), children, depth + 1, result)
            else:
                result.skipped.append(child)

    def _download_file(self, session_id: str, remote: str, local: str, result: CopyResult) -> None:
        offset = 0
        try:
            with open(local, "wb") as file:
                while True:
                    piece = self._call(routes.read_range(session_id, remote, offset, _copy.READ_CHUNK_BYTES))
                    file.write(piece)
                    offset += len(piece)
                    if len(piece) < _copy.READ_CHUNK_BYTES:
                        break
        except BaseException:
            # No half-written file is left behind.
            os.remove(local)
            raise
        result.files += 1
        result.bytes += offset

    # ---- git credentials ----

    def grant_git_credential(
        self,
        session_id: str,
        host: str,
        username: str,
        password: str,
        *,
        expires_at_ms: Optional[int] = None,
    ) -> CredentialResult:
        return self._call(routes.grant_git_credential(session_id, host, username, password, expires_at_ms))

    def revoke_git_credential(self, session_id: str, host: str) -> CredentialResult:
        return self._call(routes.revoke_git_credential(session_id, host))

    # ---- agent runs ----

    def start_agent_run(
        self,
        session_id: str,
        *,
        agent: str,
        prompt: str,
        gateway_token: str,
        gateway_base_url: Optional[str] = None,
        exec_id: Optional[str] = None,
        model: Optional[str] = None,
        agent_session_id: Optional[str] = None,
        max_turns: Optional[int] = None,
        system_prompt_append: Optional[str] = None,
        workdir: Optional[str] = None,
        browser_mcp: Optional[bool] = None,
        permission_mode: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> ExecStream:
        """Runs an agent CLI (``claude-code`` | ``opencode`` | ``codex``); the stream carries
        ``AgentEvent``s besides the exec's own events, and resumes like any exec stream."""
        exec_id = exec_id or routes.new_id("run")
        options = routes.run_options(
            model, agent_session_id, max_turns, system_prompt_append, workdir, browser_mcp, permission_mode
        )
        body = routes.agent_run_body(agent, exec_id, prompt, gateway_token, gateway_base_url, options, timeout_ms)
        return ExecStream(
            self,
            session_id,
            exec_id,
            routes.agent_run_start(session_id, body),
            lambda: routes.agent_run_attach(session_id, exec_id, agent),
            Cursor(agent=True),
        )

    def attach_agent_run(
        self, session_id: str, exec_id: str, *, agent: str, after: Optional[str] = None
    ) -> ExecStream:
        """Reattaches to an agent run after event id ``after`` (``N`` or ``N.k``; None = start)."""
        cursor = Cursor(agent=True)
        if after is not None:
            seq, _, sub = after.partition(".")
            cursor.position = (int(seq), int(sub) if sub else 0)
        attach = lambda: routes.agent_run_attach(session_id, exec_id, agent)  # noqa: E731
        return ExecStream(self, session_id, exec_id, None, attach, cursor)

    def steer_agent_run(
        self,
        session_id: str,
        exec_id: str,
        *,
        agent: str,
        text: Optional[str] = None,
        eof: bool = False,
    ) -> StdinResult:
        """Sends one more user message to the agent (and/or closes its stdin with ``eof``)."""
        return self._call(routes.steer(session_id, exec_id, agent, text, eof))

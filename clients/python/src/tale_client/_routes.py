"""Every route of the spawner API as a pure description (method, path, body, how to read the reply),
shared by the sync and async clients."""
from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Generic, Iterable, List, Mapping, Optional, Sequence, TypeVar, Union
from urllib.parse import quote, urlencode

from .errors import BadRequest
from .types import (
    CancelResult,
    CredentialResult,
    DeleteResult,
    DestroyResult,
    DirEntry,
    EnvResult,
    ExecStatus,
    ExecSummary,
    Json,
    PinResult,
    ResizeResult,
    SessionInfo,
    SkippedPath,
    StagedFile,
    StageFile,
    StageResult,
    StdinMode,
    StdinResult,
    TerminalSize,
)

T = TypeVar("T")

AGENTS = ("claude-code", "opencode")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    body: Optional[bytes]
    read: Callable[[int, Any, bytes], T]
    # Statuses other than 2xx whose body is an answer rather than an error.
    answers: FrozenSet[int] = frozenset()


@dataclass(frozen=True)
class StreamCall:
    method: str
    path: str
    body: Optional[bytes]


def segment(value: str) -> str:
    return quote(value, safe="")


def session_path(session_id: str, *rest: str) -> str:
    return "/".join(["/v1/sessions", segment(session_id), *[segment(r) for r in rest]])


def with_query(path: str, params: Mapping[str, Optional[str]]) -> str:
    kept = {k: v for k, v in params.items() if v is not None}
    return f"{path}?{urlencode(kept)}" if kept else path


def encode(body: Json) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def as_bytes(data: Union[bytes, str]) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _skipped(items: Iterable[Any]) -> List[SkippedPath]:
    return [SkippedPath(str(i.get("path", "")), str(i.get("reason", ""))) for i in items or []]


def health() -> Call[Json]:
    return Call("GET", "/health", None, lambda s, j, b: j, frozenset({503}))


def create_session(
    session_id: str,
    organization_id: str,
    profile: Optional[str],
    ttl_ms: Optional[int],
    idle_timeout_ms: Optional[int],
    env: Optional[Mapping[str, str]],
) -> Call[SessionInfo]:
    body: Json = {"sessionId": session_id, "organizationId": organization_id}
    if profile is not None:
        body["profile"] = profile
    if ttl_ms is not None:
        body["ttlMs"] = ttl_ms
    if idle_timeout_ms is not None:
        body["idleTimeoutMs"] = idle_timeout_ms
    if env:
        body["env"] = dict(env)
    return Call("POST", "/v1/sessions", encode(body), lambda s, j, b: SessionInfo.from_json(j["session"]))


def list_sessions(organization_id: Optional[str]) -> Call[List[SessionInfo]]:
    return Call(
        "GET",
        with_query("/v1/sessions", {"organizationId": organization_id}),
        None,
        lambda s, j, b: [SessionInfo.from_json(x) for x in j["sessions"]],
    )


def get_session(session_id: str) -> Call[SessionInfo]:
    return Call("GET", session_path(session_id), None, lambda s, j, b: SessionInfo.from_json(j["session"]))


def delete_session(session_id: str, if_idle: bool) -> Call[DestroyResult]:
    path = with_query(session_path(session_id), {"if_idle": "1" if if_idle else None})
    return Call(
        "DELETE",
        path,
        None,
        lambda s, j, b: DestroyResult(bool(j.get("destroyed")), bool(j.get("busy")), j),
    )


def pin_session(session_id: str, pinned: bool) -> Call[PinResult]:
    return Call(
        "PATCH",
        session_path(session_id, "pin"),
        encode({"pinned": pinned}),
        lambda s, j, b: PinResult(bool(j.get("pinned")), j),
    )


def patch_env(
    session_id: str, set: Optional[Mapping[str, str]], unset: Optional[Sequence[str]]
) -> Call[EnvResult]:
    body: Json = {}
    if set:
        body["set"] = dict(set)
    if unset:
        body["unset"] = list(unset)
    return Call(
        "PATCH",
        session_path(session_id, "env"),
        encode(body),
        lambda s, j, b: EnvResult(bool(j.get("ok")), list(j.get("denied") or []), j),
    )


def exec_body(
    exec_id: str,
    command: Optional[Sequence[str]],
    shell: Optional[str],
    cwd: Optional[str],
    env: Optional[Mapping[str, str]],
    stdin: Optional[Union[bytes, str]],
    hold_stdin: bool,
    timeout_ms: Optional[int],
    collect_output: Optional[bool],
    *,
    stdin_mode: Optional[StdinMode] = None,
    pty: Optional[TerminalSize] = None,
) -> Json:
    if (command is None) == (shell is None):
        raise BadRequest(400, "bad_request", "exactly one of command or shell is required")
    if hold_stdin and stdin_mode not in (None, "hold"):
        raise BadRequest(400, "bad_request", f"hold_stdin contradicts stdin_mode {stdin_mode!r}")
    body: Json = {"execId": exec_id}
    if command is not None:
        body["command"] = list(command)
    if shell is not None:
        body["shell"] = shell
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = dict(env)
    if stdin is not None:
        body["stdinBase64"] = base64.b64encode(as_bytes(stdin)).decode()
    if hold_stdin:
        body["stdinMode"] = "hold"
    elif stdin_mode is not None:
        body["stdinMode"] = stdin_mode
    if pty is not None:
        body["pty"] = pty.to_json()
    if timeout_ms is not None:
        body["timeoutMs"] = timeout_ms
    if collect_output is not None:
        body["collectOutput"] = collect_output
    return body


def exec_start(session_id: str, body: Json) -> StreamCall:
    return StreamCall("POST", session_path(session_id, "exec"), encode(body))


def exec_attach(session_id: str, exec_id: str) -> StreamCall:
    return StreamCall("GET", session_path(session_id, "exec", exec_id, "attach"), None)


def execute(body: Json) -> StreamCall:
    return StreamCall("POST", "/v1/execute", encode(body))


def exec_status(session_id: str, exec_id: str) -> Call[ExecStatus]:
    # 404 with {execId, state: "gone"} is an answer; a 404 without `state` stays an error.
    def read(status: int, j: Any, b: bytes) -> ExecStatus:
        if status == 404 and not (isinstance(j, dict) and "state" in j):
            raise _NotAnAnswer()
        return ExecStatus.from_json(j)

    return Call("GET", session_path(session_id, "exec", exec_id), None, read, frozenset({404}))


def list_execs(session_id: str) -> Call[List[ExecSummary]]:
    return Call(
        "GET",
        session_path(session_id, "exec"),
        None,
        lambda s, j, b: [ExecSummary.from_json(e) for e in j.get("execs") or []],
    )


class _NotAnAnswer(Exception):
    """Raised by a reader when a listed status turned out to be an error after all."""


def cancel(session_id: str, exec_id: str) -> Call[CancelResult]:
    return Call(
        "POST",
        session_path(session_id, "exec", exec_id, "cancel"),
        b"",
        lambda s, j, b: CancelResult(bool(j.get("killed")), j),
    )


def _stdin_result(s: int, j: Any, b: bytes) -> StdinResult:
    return StdinResult(bool(j.get("ok")), j.get("reason"), j)


def stdin(session_id: str, exec_id: str, data: Optional[Union[bytes, str]], eof: bool) -> Call[StdinResult]:
    body: Json = {}
    if data is not None:
        body["b64"] = base64.b64encode(as_bytes(data)).decode()
    if eof:
        body["eof"] = True
    return Call("POST", session_path(session_id, "exec", exec_id, "stdin"), encode(body), _stdin_result)


def resize(session_id: str, exec_id: str, cols: int, rows: int) -> Call[ResizeResult]:
    return Call(
        "POST",
        session_path(session_id, "exec", exec_id, "resize"),
        encode({"cols": cols, "rows": rows}),
        lambda s, j, b: ResizeResult(bool(j.get("ok")), j.get("reason"), j),
    )


def stage_files(session_id: str, files: Sequence[StageFile]) -> Call[StageResult]:
    def read(s: int, j: Any, b: bytes) -> StageResult:
        staged = [StagedFile(str(i["path"]), int(i["bytes"])) for i in j.get("staged") or []]
        return StageResult(staged, _skipped(j.get("skipped")), j)

    body = encode({"files": [f.to_json() for f in files]})
    return Call("POST", session_path(session_id, "files", "stage"), body, read)


def delete_files(session_id: str, paths: Sequence[str]) -> Call[DeleteResult]:
    return Call(
        "POST",
        session_path(session_id, "files", "delete"),
        encode({"paths": list(paths)}),
        lambda s, j, b: DeleteResult([str(p) for p in j.get("deleted") or []], _skipped(j.get("skipped")), j),
    )


def list_files(session_id: str, path: str) -> Call[List[DirEntry]]:
    def read(s: int, j: Any, b: bytes) -> List[DirEntry]:
        return [
            DirEntry(str(e["name"]), str(e["type"]), int(e.get("size", 0)), int(e.get("mtimeMs", 0)))
            for e in j.get("entries") or []
        ]

    return Call("GET", with_query(session_path(session_id, "files"), {"path": path}), None, read)


def read_file(session_id: str, path: str) -> Call[bytes]:
    return Call(
        "GET",
        with_query(session_path(session_id, "files", "content"), {"path": path}),
        None,
        lambda s, j, b: b,
    )


def write_chunk(session_id: str, path: str, offset: int, data: bytes, commit: bool) -> Call[int]:
    """One chunk of a file written in pieces; the file's size so far."""
    query = {"path": path, "offset": str(offset), "commit": "true" if commit else "false"}
    return Call(
        "POST",
        with_query(session_path(session_id, "files", "write"), query),
        data,
        lambda s, j, b: int(j.get("size", 0)),
    )


def read_range(session_id: str, path: str, offset: int, length: int) -> Call[bytes]:
    """At most ``length`` bytes of a file from ``offset`` (fewer only at its end)."""
    query = {"path": path, "offset": str(offset), "length": str(length)}
    return Call("GET", with_query(session_path(session_id, "files", "content"), query), None, lambda s, j, b: b)


def grant_git_credential(
    session_id: str, host: str, username: str, password: str, expires_at_ms: Optional[int]
) -> Call[CredentialResult]:
    body: Json = {"host": host, "username": username, "password": password}
    if expires_at_ms is not None:
        body["expiresAtMs"] = expires_at_ms
    return Call(
        "PUT",
        session_path(session_id, "credentials", "git"),
        encode(body),
        lambda s, j, b: CredentialResult(bool(j.get("ok")), j.get("existed"), j),
    )


def revoke_git_credential(session_id: str, host: str) -> Call[CredentialResult]:
    return Call(
        "DELETE",
        session_path(session_id, "credentials", "git", host),
        None,
        lambda s, j, b: CredentialResult(bool(j.get("ok")), j.get("existed"), j),
    )


def agent_run_body(
    agent: str,
    exec_id: str,
    prompt: str,
    gateway_token: str,
    gateway_base_url: Optional[str],
    run_options: Mapping[str, Any],
    timeout_ms: Optional[int],
) -> Json:
    run: Json = {"prompt": prompt}
    run.update({k: v for k, v in run_options.items() if v is not None})
    gateway: Json = {"token": gateway_token}
    if gateway_base_url is not None:
        gateway["baseUrl"] = gateway_base_url
    body: Json = {"agent": agent, "execId": exec_id, "run": run, "gateway": gateway}
    if timeout_ms is not None:
        body["timeoutMs"] = timeout_ms
    return body


def agent_run_start(session_id: str, body: Json) -> StreamCall:
    return StreamCall("POST", session_path(session_id, "agent-runs"), encode(body))


def agent_run_attach(session_id: str, exec_id: str, agent: str) -> StreamCall:
    path = with_query(session_path(session_id, "agent-runs", exec_id, "attach"), {"agent": agent})
    return StreamCall("GET", path, None)


def steer(session_id: str, exec_id: str, agent: str, text: Optional[str], eof: bool) -> Call[StdinResult]:
    body: Json = {"agent": agent}
    if text is not None:
        body["text"] = text
    if eof:
        body["eof"] = True
    return Call("POST", session_path(session_id, "agent-runs", exec_id, "steer"), encode(body), _stdin_result)


def run_options(
    model: Optional[str],
    agent_session_id: Optional[str],
    max_turns: Optional[int],
    system_prompt_append: Optional[str],
    workdir: Optional[str],
    browser_mcp: Optional[bool],
    permission_mode: Optional[str],
) -> Dict[str, Any]:
    return {
        "model": model,
        "agentSessionId": agent_session_id,
        "maxTurns": max_turns,
        "systemPromptAppend": system_prompt_append,
        "workdir": workdir,
        "browserMcp": browser_mcp,
        "permissionMode": permission_mode,
    }

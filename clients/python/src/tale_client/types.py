"""Typed replies and stream events (dataclasses; JSON field names are camelCase on the wire).

Every reply keeps the JSON it came from in ``raw``, so fields added later by the server are reachable.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

Json = Dict[str, Any]


def _opt_int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    organization_id: str
    profile: str
    state: str
    backend: str
    created_at_ms: int
    last_activity_at_ms: int
    expires_at_ms: int
    idle_timeout_ms: int
    pinned: bool
    #: Whether the session's compute can be reached: ``True`` (the field is absent), ``False``
    #: (kubernetes: its Pod's node stopped reporting), ``None`` (the spawner cannot tell).
    reachable: Optional[bool] = True
    raw: Json = field(repr=False, compare=False, default_factory=dict)

    @staticmethod
    def from_json(data: Json) -> "SessionInfo":
        return SessionInfo(
            session_id=data["sessionId"],
            organization_id=data["organizationId"],
            profile=data.get("profile", "default"),
            state=data.get("state", ""),
            backend=data.get("backend", ""),
            created_at_ms=int(data.get("createdAtMs", 0)),
            last_activity_at_ms=int(data.get("lastActivityAtMs", 0)),
            expires_at_ms=int(data.get("expiresAtMs", 0)),
            idle_timeout_ms=int(data.get("idleTimeoutMs", 0)),
            pinned=bool(data.get("pinned", False)),
            reachable=(
                True if "reachable" not in data
                else None if data["reachable"] is None
                else bool(data["reachable"])
            ),
            raw=data,
        )


@dataclass(frozen=True)
class DestroyResult:
    destroyed: bool
    busy: bool
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class PinResult:
    pinned: bool
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class EnvResult:
    ok: bool
    denied: List[str]
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class StdinResult:
    """``ok`` false carries runnerd's ``reason``: ``NOT_FOUND``, ``STDIN_CLOSED``, ``BAD_LINE``,
    ``WRITE_FAILED``, ``TOO_LARGE`` (a raw-stdin write over 1 MiB)."""

    ok: bool
    reason: Optional[str]
    raw: Json = field(repr=False, compare=False, default_factory=dict)


StdinMode = Literal["close", "hold", "raw"]
"""How an exec's stdin is kept: ``close`` after the initial bytes, ``hold`` open for one JSON line
per write, ``raw`` open for any bytes (a pty exec's stdin is always raw)."""


@dataclass(frozen=True)
class TerminalSize:
    """A pty size in character cells, each 1–1000 (the spawner refuses others with 400)."""

    cols: int
    rows: int

    def to_json(self) -> Json:
        return {"cols": self.cols, "rows": self.rows}


@dataclass(frozen=True)
class ResizeResult:
    """``ok`` false carries runnerd's ``reason``: ``NOT_FOUND`` (no live exec) or
    ``NOT_A_TERMINAL`` (the exec runs without a pty)."""

    ok: bool
    reason: Optional[str]
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class CancelResult:
    killed: bool
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class ExecStatus:
    """``state``: ``running`` (with ``started_at_ms``), ``exited`` (with ``exit_code``) or ``gone``."""

    exec_id: str
    state: str
    started_at_ms: Optional[int] = None
    exit_code: Optional[int] = None
    raw: Json = field(repr=False, compare=False, default_factory=dict)

    @staticmethod
    def from_json(data: Json) -> "ExecStatus":
        return ExecStatus(
            exec_id=str(data.get("execId", "")),
            state=str(data.get("state", "")),
            started_at_ms=_opt_int(data.get("startedAtMs")),
            exit_code=_opt_int(data.get("exitCode")),
            raw=data,
        )


@dataclass(frozen=True)
class ExecSummary:
    """One of a session's live or retained execs (``list_execs``): ``state`` ``running`` or
    ``exited``; ``exit_code`` None while running or when a signal ended it; ``pty`` for a terminal."""

    exec_id: str
    state: str
    started_at_ms: int
    exit_code: Optional[int]
    pty: bool
    raw: Json = field(repr=False, compare=False, default_factory=dict)

    @staticmethod
    def from_json(data: Json) -> "ExecSummary":
        return ExecSummary(
            exec_id=str(data.get("execId", "")),
            state=str(data.get("state", "")),
            started_at_ms=int(data.get("startedAtMs", 0)),
            exit_code=_opt_int(data.get("exitCode")),
            pty=bool(data.get("pty", False)),
            raw=data,
        )


@dataclass(frozen=True)
class StagedFile:
    path: str
    bytes: int


@dataclass(frozen=True)
class SkippedPath:
    path: str
    reason: str


@dataclass(frozen=True)
class StageResult:
    staged: List[StagedFile]
    skipped: List[SkippedPath]
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class DeleteResult:
    deleted: List[str]
    skipped: List[SkippedPath]
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class DirEntry:
    name: str
    type: str  # "file" | "dir" | "other"
    size: int
    mtime_ms: int


@dataclass
class CopyResult:
    """What ``upload``/``download`` moved: files, bytes, and the paths left out (symlinks and
    special files)."""

    files: int = 0
    bytes: int = 0
    skipped: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class StageFile:
    """One file to stage: inline ``content`` (bytes or text, at most 1 MiB) or a ``url`` to fetch."""

    path: str
    content: Optional[Union[bytes, str]] = None
    url: Optional[str] = None

    def to_json(self) -> Json:
        item: Json = {"path": self.path}
        if self.url is not None:
            item["url"] = self.url
        if self.content is not None:
            data = self.content.encode() if isinstance(self.content, str) else self.content
            item["contentBase64"] = base64.b64encode(data).decode()
        return item


@dataclass(frozen=True)
class CredentialResult:
    ok: bool
    existed: Optional[bool]
    raw: Json = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    """The ``result`` event. ``status``: completed | failed | cancelled; ``reason``: completed |
    failed | cancelled | timed_out | session_lost. ``stdout``/``stderr`` hold the collected bytes of
    a collecting exec's first stream; they are empty on an attach (also a resumed one) — the
    streamed ``OutputEvent`` texts are the output then."""

    status: str
    exit_code: Optional[int]
    duration_ms: int
    stdout: bytes
    stderr: bytes
    truncated_stdout: bool
    truncated_stderr: bool
    error_code: Optional[str]
    error_message: Optional[str]
    reason: Optional[str]
    raw: Json = field(repr=False, compare=False, default_factory=dict)

    @staticmethod
    def from_json(data: Json) -> "ExecResult":
        truncated = data.get("truncated") or {}
        return ExecResult(
            status=str(data.get("status", "")),
            exit_code=_opt_int(data.get("exitCode")),
            duration_ms=int(data.get("durationMs") or 0),
            stdout=base64.b64decode(data.get("stdoutBase64") or ""),
            stderr=base64.b64decode(data.get("stderrBase64") or ""),
            truncated_stdout=bool(truncated.get("stdout", False)),
            truncated_stderr=bool(truncated.get("stderr", False)),
            error_code=data.get("errorCode"),
            error_message=data.get("errorMessage"),
            reason=data.get("reason"),
            raw=data,
        )


# ---- stream events ----


@dataclass(frozen=True)
class PhaseEvent:
    phase: str
    seq: Optional[int]


@dataclass(frozen=True)
class OutputEvent:
    """A piece of ``stdout`` or ``stderr``, decoded as UTF-8 (a character split across chunks is
    never mangled). ``seq`` orders it within the exec."""

    stream: Literal["stdout", "stderr"]
    text: str
    seq: int


@dataclass(frozen=True)
class GapEvent:
    """Events ``from_seq..=to_seq`` were evicted from the session's journal before this client read
    them: that output is lost. Never dropped silently."""

    from_seq: int
    to_seq: int


@dataclass(frozen=True)
class ResultEvent:
    result: ExecResult


@dataclass(frozen=True)
class ErrorEvent:
    """The spawner lost its upstream (or the exec is unknown on attach); the stream ends."""

    message: str


@dataclass(frozen=True)
class AgentEvent:
    """One normalized agent event (``type``: run-started, text-delta, text, tool-use, tool-result,
    usage, result, error, raw); ``data`` is its JSON (camelCase fields); ``id`` is ``<seq>.<n>``."""

    id: str
    type: str
    data: Json


@dataclass(frozen=True)
class UnknownEvent:
    """An event this client version does not know (forward compatibility)."""

    name: str
    data: Any
    id: Optional[str]


Event = Union[PhaseEvent, OutputEvent, GapEvent, ResultEvent, ErrorEvent, AgentEvent, UnknownEvent]


@dataclass
class ExecOutput:
    """Everything a finished stream delivered: output text in order, the gaps, the result."""

    stdout: str
    stderr: str
    result: Optional[ExecResult]
    gaps: List[GapEvent]
    error: Optional[str] = None
    agent_events: List[AgentEvent] = field(default_factory=list)

    @property
    def exit_code(self) -> Optional[int]:
        return self.result.exit_code if self.result else None

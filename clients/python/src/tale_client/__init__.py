"""Typed client for the tale spawner API (sync :class:`Client`, async :class:`AsyncClient`).

Every request is signed with ``SANDBOX_TOKEN`` and a fresh nonce; exec and agent-run streams resume
transparently after a dropped connection, each event delivered once; journal gaps arrive as
:class:`GapEvent`.
"""
from ._signing import sign, signed_headers, signing_string
from ._transport import ReconnectPolicy, RetryPolicy
from .aio import AsyncClient, AsyncExecStream
from .client import Client, ExecStream
from .errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    StreamInterrupted,
    TaleError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
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
    OutputEvent,
    PhaseEvent,
    PinResult,
    ResizeResult,
    ResultEvent,
    SessionInfo,
    SkippedPath,
    StagedFile,
    StageFile,
    StageResult,
    StdinMode,
    StdinResult,
    TerminalSize,
    UnknownEvent,
)

__all__ = [
    "AgentEvent", "ApiError", "AsyncClient", "AsyncExecStream", "BadRequest", "CancelResult",
    "Client", "Conflict", "CopyResult", "CredentialResult", "DeleteResult", "DestroyResult",
    "DirEntry", "EnvResult", "ErrorEvent", "Event", "ExecOutput", "ExecResult", "ExecStatus",
    "ExecStream", "ExecSummary", "GapEvent", "NotFound", "OutputEvent", "PayloadTooLarge",
    "PhaseEvent", "PinResult", "ReconnectPolicy", "ResizeResult", "ResultEvent", "RetryPolicy",
    "SessionInfo", "SkippedPath", "StageFile", "StageResult", "StagedFile", "StdinMode",
    "StdinResult", "StreamInterrupted", "TaleError", "TerminalSize", "TooManyRequests",
    "Unauthorized", "Unavailable", "UnknownEvent", "UpstreamError", "sign", "signed_headers",
    "signing_string",
]

"""SSE parsing and the resume cursors, shared by the sync and async clients (no I/O here).

A cursor turns raw SSE frames into typed events, drops what an earlier connection already
delivered, and says where a new connection must resume so that no byte is lost or repeated.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

from .types import (
    AgentEvent,
    ErrorEvent,
    Event,
    ExecResult,
    GapEvent,
    OutputEvent,
    PhaseEvent,
    ResultEvent,
    UnknownEvent,
)

# Older spawners decoded each connection's output with a fresh UTF-8 decoder, so the first bytes of
# a resumed connection were mangled when a character straddled the resume point (current spawners
# rebuild that character themselves). Resuming a few characters early (and dropping what repeats)
# keeps both right: 5 characters hold at least 4 bytes, more than the 3 bytes a cut character can
# leave pending.
RESYNC_CHARS = 5
# Output events remembered per stream to find that point.
RESYNC_EVENTS = 64


@dataclass
class SseFrame:
    event: str
    id: Optional[str]
    data: str


class SseParser:
    """Incremental text/event-stream parser; an unfinished frame is discarded with its connection."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._id: Optional[str] = None
        self._data: List[str] = []

    def feed(self, chunk: bytes) -> List[SseFrame]:
        self._buffer += chunk
        frames: List[SseFrame] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line = self._buffer[:newline]
            self._buffer = self._buffer[newline + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            text = line.decode("utf-8", "replace")
            if text == "":
                if self._data or self._event:
                    frames.append(SseFrame(self._event or "message", self._id, "\n".join(self._data)))
                self._event, self._id, self._data = "", None, []
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "event":
                self._event = value
            elif name == "id":
                self._id = value
            elif name == "data":
                self._data.append(value)
        return frames


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def _int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _position(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``N`` or ``N.k`` as (N, k)."""
    if text is None:
        return None
    seq, _, sub = text.strip().partition(".")
    try:
        return (int(seq), int(sub) if sub else 0)
    except ValueError:
        return None


class Cursor:
    """Position within one exec's stream.

    ``agent`` streams (agent runs) resume at the last id (``N`` or ``N.k``): the spawner replays the
    exec from its start and sends only what lies after it. Plain exec streams resume at a seq a few
    characters before the last one delivered (see ``RESYNC_CHARS``); repeats are dropped here.
    """

    def __init__(self, agent: bool = False, since_seq: int = 0) -> None:
        self.agent = agent
        self.position: Tuple[int, int] = (since_seq, 0)
        self.finished = False
        self._recent: Dict[str, Deque[Tuple[int, int]]] = {
            "stdout": deque(maxlen=RESYNC_EVENTS),
            "stderr": deque(maxlen=RESYNC_EVENTS),
        }
        self._flushed: Set[Tuple[str, int]] = set()

    @property
    def last_seq(self) -> int:
        return self.position[0]

    def resume_id(self) -> Optional[str]:
        """The ``Last-Event-ID`` for the next connection (None = from the start)."""
        if self.agent:
            seq, sub = self.position
            if seq == 0 and sub == 0:
                return None
            return f"{seq}.{sub}" if sub else str(seq)
        point = self.last_seq
        for recent in self._recent.values():
            if recent:
                point = min(point, recent[0][0] - 1)
        return str(max(point, 0))

    def _remember(self, stream: str, seq: int, text: str) -> None:
        recent = self._recent[stream]
        recent.append((seq, len(text)))
        while len(recent) > 1 and sum(n for _, n in list(recent)[1:]) >= RESYNC_CHARS:
            recent.popleft()

    def _is_new(self, position: Tuple[int, int]) -> bool:
        if position <= self.position:
            return False
        self.position = position
        return True

    def accept(self, frame: SseFrame) -> Optional[Event]:
        """The typed event for ``frame``, or None when an earlier connection delivered it."""
        data = _json(frame.data)
        fields: Dict[str, Any] = data if isinstance(data, dict) else {}
        position = _position(frame.id)
        name = frame.event
        if name == "result":
            self.finished = True
            return ResultEvent(ExecResult.from_json(fields))
        if name == "error":
            self.finished = True
            return ErrorEvent(str(fields.get("message", frame.data)))
        if name == "gap":
            from_seq, to_seq = _int(fields.get("fromSeq")), _int(fields.get("toSeq"))
            if to_seq <= self.last_seq:
                return None
            from_seq = max(from_seq, self.last_seq + 1)
            self.position = (to_seq, 0)
            return GapEvent(from_seq, to_seq)
        if name in ("stdout", "stderr"):
            text = str(fields.get("text", ""))
            seq = _int(fields.get("seq"))
            if position is None:
                # The flush of a character cut at the very end, sent before the result: once.
                key = (name, seq)
                if key in self._flushed:
                    return None
                self._flushed.add(key)
                return OutputEvent(name, text, seq)  # type: ignore[arg-type]
            if not self._is_new(position):
                return None
            self._remember(name, position[0], text)
            return OutputEvent(name, text, position[0])  # type: ignore[arg-type]
        if name == "phase":
            if position is not None and not self._is_new(position):
                return None
            return PhaseEvent(str(fields.get("phase", "")), position[0] if position else None)
        if name == "agent":
            if position is not None and not self._is_new(position):
                return None
            return AgentEvent(frame.id or "", str(fields.get("type", "")), fields)
        if position is not None and not self._is_new(position):
            return None
        return UnknownEvent(name, data, frame.id)

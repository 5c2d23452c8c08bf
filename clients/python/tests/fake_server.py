"""A scripted HTTP server on loopback for the client's unit tests: each request is answered by the
next function of a script, which gets the request and writes the raw response."""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional


@dataclass
class Seen:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes


Handler = Callable[[Seen, socket.socket], None]


@dataclass
class FakeServer:
    script: List[Handler]
    seen: List[Seen] = field(default_factory=list)
    port: int = 0
    _sock: Optional[socket.socket] = None

    def __enter__(self) -> "FakeServer":
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._sock is not None
        self._sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            while True:
                request = _read_request(conn)
                if request is None:
                    return
                self.seen.append(request)
                if not self.script:
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                    return
                handler = self.script.pop(0)
                handler(request, conn)
                if request.headers.get("connection") == "close":
                    return


def _read_request(conn: socket.socket) -> Optional[Seen]:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += conn.recv(65536)
    return Seen(method, path, headers, rest[:length])


def json_reply(status: int, body: bytes, extra: str = "") -> Handler:
    def handler(request: Seen, conn: socket.socket) -> None:
        conn.sendall(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    return handler


def sse_then_cut(frames: bytes) -> Handler:
    """An SSE response that sends ``frames`` and then drops the connection mid-body."""

    def handler(request: Seen, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            + f"{len(frames):x}\r\n".encode()
            + frames
            + b"\r\n"
        )
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    return handler


def sse_complete(frames: bytes) -> Handler:
    def handler(request: Seen, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            + f"content-length: {len(frames)}\r\n\r\n".encode()
            + frames
        )

    return handler

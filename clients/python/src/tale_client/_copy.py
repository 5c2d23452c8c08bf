"""Files and directory trees of any size between this machine and a session, in pieces: chunked
writes up (``POST …/files/write``, the last chunk commits) and ranged reads down
(``GET …/files/content?offset=&length=``; a short piece is the end). The local side of it, shared
by the sync and async clients (no network here)."""
from __future__ import annotations

import os
from typing import BinaryIO, Iterator, List, Tuple

from .types import CopyResult

# Bytes per uploaded chunk: under the spawner's default 2 MiB request body cap.
WRITE_CHUNK_BYTES = 1024 * 1024
# Bytes asked for per ranged read.
READ_CHUNK_BYTES = 4 * 1024 * 1024
# Deepest directory tree copied (either way).
MAX_DEPTH = 64


def join(remote: str, name: str) -> str:
    return f"{remote.rstrip('/')}/{name}"


def upload_plan(local: str, remote: str, result: CopyResult) -> List[Tuple[str, str]]:
    """(local file, remote path) for a file, or for every file under a directory; symlinks and
    special files go to ``result.skipped``."""
    plan: List[Tuple[str, str]] = []

    def walk(path: str, target: str, depth: int) -> None:
        if os.path.islink(path):
            result.skipped.append(path)
        elif os.path.isfile(path):
            plan.append((path, target))
        elif os.path.isdir(path):
            if depth >= MAX_DEPTH:
                raise ValueError(f"{path}: deeper than {MAX_DEPTH} directories")
            for name in sorted(os.listdir(path)):
                walk(os.path.join(path, name), join(target, name), depth + 1)
        elif os.path.exists(path):
            result.skipped.append(path)
        else:
            raise FileNotFoundError(path)

    walk(local, remote, 0)
    return plan


def chunks(file: BinaryIO) -> Iterator[Tuple[int, bytes, bool]]:
    """(offset, data, last) for each chunk of ``file``; an empty file is one empty last chunk."""
    offset = 0
    data = file.read(WRITE_CHUNK_BYTES)
    while True:
        following = file.read(WRITE_CHUNK_BYTES) if len(data) == WRITE_CHUNK_BYTES else b""
        last = not following
        yield offset, data, last
        if last:
            return
        offset += len(data)
        data = following


def safe_name(name: str) -> bool:
    """Whether a name listed by the session may become a local path component."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def local_target(remote: str, local: str) -> str:
    """Where a downloaded file goes: ``local``, or ``local/<name>`` when it is a directory."""
    if os.path.isdir(local):
        return os.path.join(local, remote.rstrip("/").rsplit("/", 1)[-1])
    return local

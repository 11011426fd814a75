"""Files the harness writes: atomically, or under an exclusive flock."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Callable, Iterator


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write through a temporary file and rename: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    if mode is not None:
        tmp.chmod(mode)
    os.replace(tmp, path)


def atomic_write_json(path: Path, doc, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(doc, indent=indent, default=str) + "\n")


@contextlib.contextmanager
def flock(path: Path, shared: bool = False, blocking: bool = True) -> Iterator[int]:
    """flock(2) on path (created if missing); yields the descriptor. Closing it releases the lock,
    so a process that dies never leaves the lock held. Non-blocking: BlockingIOError if taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, what: str, progress: Callable[[str], None] = lambda _msg: None) -> Iterator[None]:
    """An exclusive flock that says whom it waits for when it has to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another {what} ({path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def locked_append(path: Path, line: str) -> None:
    """Append one line whole, even with writers in several processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)


def try_hold(path: Path) -> int | None:
    """Take an exclusive flock without waiting and keep it: the open descriptor, or None when taken.

    The lock lasts until the descriptor is closed or the process ends, however it ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd

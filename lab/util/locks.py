"""A readers-writer file lock that works across pytest-xdist workers.

Tests that only check correctness share it; tests that assert timing take it
alone, so parallel guests do not distort what they measure. A turnstile stops
a stream of readers from starving a waiting writer.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class MeasurementLock:
    def __init__(self, directory: Path):
        self.main = directory / ".measure.lock"
        self.turnstile = directory / ".measure.turnstile"

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with _flock(self.turnstile, fcntl.LOCK_EX):
            pass  # wait behind any writer already queued
        with _flock(self.main, fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with _flock(self.turnstile, fcntl.LOCK_EX), _flock(self.main, fcntl.LOCK_EX):
            yield


@contextlib.contextmanager
def file_lock(path: Path, what: str, progress: Callable[[str], None] = lambda _msg: None) -> Iterator[None]:
    """An exclusive flock; says whom it waits for when it has to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another {what} ({path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

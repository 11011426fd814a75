"""A readers-writer file lock that works across pytest-xdist workers.

Tests that only check correctness share it; tests that assert timing take it
alone, so parallel guests do not distort what they measure. A turnstile stops
a stream of readers from starving a waiting writer.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from lab.util.files import flock


class MeasurementLock:
    def __init__(self, directory: Path):
        self.main = directory / ".measure.lock"
        self.turnstile = directory / ".measure.turnstile"

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with flock(self.turnstile):
            pass  # wait behind any writer already queued
        with flock(self.main, shared=True):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with flock(self.turnstile), flock(self.main):
            yield

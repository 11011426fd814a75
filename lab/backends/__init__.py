"""Lab backends: each brings hosts up and down behind the same small interface."""
from __future__ import annotations

from typing import Callable, Protocol

from lab.config.lab import LabConfig
from lab.errors import BackendError

Progress = Callable[[str], None]


class Backend(Protocol):
    config: LabConfig

    def up(self, progress: Progress, owner_run: str = "") -> None: ...

    def down(self, progress: Progress) -> None: ...

    def is_up(self) -> bool: ...

    def status(self) -> dict: ...


def get_backend(config: LabConfig) -> Backend:
    if config.backend == "embedded":
        from lab.backends.embedded.backend import EmbeddedBackend

        return EmbeddedBackend(config)
    if config.backend == "vagrant":
        from lab.backends.vagrant.backend import VagrantBackend

        return VagrantBackend(config)
    if config.backend == "static":
        from lab.backends.static.backend import StaticBackend

        return StaticBackend(config)
    raise BackendError(f"backend: {config.backend!r} is not available yet in this version; use embedded, static or vagrant")

"""What every backend is: a narrow interface, and the digest of the lab it made."""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Protocol

from lab.config.lab import LabConfig

Progress = Callable[[str], None]


def quiet(_msg: str) -> None:
    """A Progress that says nothing."""


class Backend(Protocol):
    config: LabConfig

    def up(self, progress: Progress, owner_run: str = "") -> None: ...

    def down(self, progress: Progress) -> None: ...

    def is_up(self) -> bool: ...

    def status(self) -> dict: ...


def config_digest(config: LabConfig) -> str:
    """What a running lab was made from: its shape only (not settings that don't change what `up` makes)."""
    doc = config.model_dump(mode="json")
    for unrelated in ("source", "hotpatch", "vagrant", "guest", "pairs"):
        doc.pop(unrelated, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

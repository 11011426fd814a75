"""Host pairs handed out to pytest-xdist workers, so a lab with more hosts runs more at once.

Each worker process claims one pair for its whole life with a non-blocking
flock on `<lab>/pairs/<src>-<dst>.lock`, starting its search at its own
index so workers spread out. The kernel drops the lock when the process
ends, however it ends, so a killed run never leaves a pair taken. With more
workers than pairs the extra workers share a pair (as every worker shares
the one pair of a two-host lab).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lab.errors import StateError
from lab.util.files import try_hold

_HELD: dict[str, "Claim"] = {}  # lock path -> this process's claim (its descriptor stays open)


@dataclass(frozen=True)
class Claim:
    src: str
    dst: str
    exclusive: bool  # False: every pair was taken, this worker shares one
    fd: int = -1  # the open, locked file that holds the claim (exclusive claims only)


def worker_index(worker_id: str | None) -> int:
    """'gw3' -> 3; the controller or a run without xdist is worker 0."""
    if worker_id and worker_id.startswith("gw") and worker_id[2:].isdigit():
        return int(worker_id[2:])
    return 0


def claim_pair(lab_name: str, pairs: list, folder: Path, worker_id: str | None) -> Claim:
    """One of `pairs` (source, destination hosts) for this process, by a lock file in `folder`."""
    if not pairs:
        raise StateError(f"lab {lab_name!r} has no host pair (lab.yaml pairs:, or at least two hosts)")
    held = list(_HELD.values())
    if held:  # one claim per process: asking again gives the same pair
        return held[0]
    start = worker_index(worker_id) % len(pairs)
    for offset in range(len(pairs)):
        src, dst = pairs[(start + offset) % len(pairs)]
        path = str(folder / f"{src.name}-{dst.name}.lock")
        fd = try_hold(path)
        if fd is None:
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {worker_id or 'main'}\n".encode())
        _HELD[path] = claim = Claim(src.name, dst.name, True, fd)
        return claim
    src, dst = pairs[start]
    return Claim(src.name, dst.name, False)


def release_all() -> None:
    """Give back every pair this process holds (the process ending does the same)."""
    for path, claim in list(_HELD.items()):
        os.close(claim.fd)
        del _HELD[path]

"""Running commands: one place that turns a failed command into a one-line LabError."""
from __future__ import annotations

import subprocess
from typing import Sequence

from lab.errors import LabError


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    input: str | None = None,
    error: type[LabError] = LabError,
    what: str | None = None,
) -> subprocess.CompletedProcess:
    """Run argv, capture text output; on failure raise `error` naming the command and its last stderr line."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise error(f"{argv[0]}: command not found (run `make setup`)") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what or ' '.join(argv)}: timed out after {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise error(f"{what or ' '.join(argv)}: {detail}")
    return proc


def ok(argv: Sequence[str], timeout: float = 30) -> bool:
    """True when argv exits 0; never raises for a failing or missing command."""
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False

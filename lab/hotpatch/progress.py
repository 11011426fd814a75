"""Progress of the hot patch package's long steps (QEMU and kpatch builds take minutes):
the callback type every step takes, the silent default, and the printer the suite uses,
which writes past pytest's output capture to the terminal and to the run's report folder.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from lab.util.files import locked_append

Progress = Callable[[str], None]
PROGRESS_LOG = "hotpatch-build-progress.log"


def quiet(_msg: str) -> None:
    """The default: say nothing."""


def progress_printer(report_dir: Path) -> Progress:
    """Progress of long builds: to the terminal (past pytest's capture) and to the run's report folder."""
    log = report_dir / PROGRESS_LOG
    started = time.monotonic()

    def say(msg: str) -> None:
        line = f"[hotpatch {time.monotonic() - started:6.0f}s] {msg}"
        print(line, file=sys.__stderr__, flush=True)
        locked_append(log, line + "\n")  # whole lines, with xdist workers writing too
    return say

"""Progress of the hot patch package's long steps (QEMU and kpatch builds take minutes):
the callback type every step takes, the silent default, and the printer the suite uses,
which writes past pytest's output capture to the terminal and to the run's report folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lab.util.files import locked_append
from lab.util.progress import StatusLine

Progress = Callable[[str], None]
PROGRESS_LOG = "hotpatch-build-progress.log"


def quiet(_msg: str) -> None:
    """The default: say nothing."""


def progress_printer(report_dir: Path) -> Progress:
    """Progress of long builds: to the terminal (past pytest's capture; a live line on a TTY, a
    reminder a minute otherwise, while a build runs silently) and to the run's report folder."""
    log = report_dir / PROGRESS_LOG
    # whole lines, with xdist workers writing too
    return StatusLine("hotpatch", also=lambda line: locked_append(log, line + "\n"))

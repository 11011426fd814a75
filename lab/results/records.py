"""Typed run records, appended as JSON lines to reports/<run>/results.jsonl."""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

REPORTS = Path(__file__).resolve().parents[2] / "reports"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def append_record(report_dir: Path, record: dict) -> None:
    """Append one record; a file lock keeps lines from parallel workers whole."""
    report_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, default=str) + "\n"
    with open(report_dir / "results.jsonl", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)


def read_records(report_dir: Path) -> list[dict]:
    path = report_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""Typed run records, appended as JSON lines to reports/<run>/results.jsonl."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lab.util.files import atomic_write_json, locked_append

REPORTS = Path(__file__).resolve().parents[2] / "reports"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def append_record(report_dir: Path, record: dict) -> None:
    """Append one record; a file lock keeps lines from parallel workers whole."""
    report_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, default=str) + "\n"
    locked_append(report_dir / "results.jsonl", line)


def read_records(report_dir: Path) -> list[dict]:
    path = report_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_series(report_dir: Path, name: str, series: dict) -> str:
    """The probes' arrival times of one migration, as a sidecar file beside results.jsonl (too long
    for a JSON line); returns its path relative to the run folder, which the record names."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    relative = f"series/{safe}.json"
    atomic_write_json(report_dir / relative, series, indent=None)
    return relative

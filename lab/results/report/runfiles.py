"""What a run leaves in its folder, read tolerantly: junit.xml, results.jsonl, lab.json (the lab's
facts, kept by the controller at the end of the run), the per-migration series sidecars and the
evidence of failed tests. A missing or unreadable part is a warning shown in the report, never a
made-up value."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import ReportError
from lab.results.report.junit import Outcome, read_junit
from lab.util.files import atomic_write_json

JUNIT, RECORDS, FACTS, EVIDENCE = "junit.xml", "results.jsonl", "lab.json", "tests"


@dataclass
class RunData:
    run_dir: Path
    outcomes: list[Outcome] | None  # None: no junit.xml
    records: list[dict]
    facts: dict  # lab.json, {} when absent
    evidence: dict[str, list[str]]  # evidence folder name -> files, relative to the run folder
    warnings: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.facts.get("run_id") or self.run_dir.name

    def of_kind(self, *kinds: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") in kinds]

    def outcome(self, nodeid: str) -> Outcome | None:
        for o in self.outcomes or []:
            if o.nodeid == nodeid or nodeid.endswith("/" + o.nodeid):
                return o
        return None


def write_lab_facts(run_dir: Path, facts: dict) -> None:
    """Keep the lab's facts (backend, accelerator and why, hosts, thresholds) beside the records."""
    atomic_write_json(Path(run_dir) / FACTS, facts)


def evidence_dir_name(nodeid: str) -> str:
    """The folder a test's evidence goes to under tests/ (as the pytest plugin names it)."""
    return "".join(c if c.isalnum() or c in "-_.[]" else "_" for c in nodeid)[-150:]


class Record(dict):
    """A results.jsonl line: its fields are the writer's, so one a template asks for may be absent in an
    older or newer record; it reads as None (shown as absent) instead of failing the whole report."""

    def __missing__(self, key):
        return None


def _read_records(path: Path, warnings: list[str]) -> list[dict]:
    records = []
    if not path.exists():
        warnings.append(f"{RECORDS}: absent (no test wrote a record)")
        return records
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"{RECORDS} line {number}: not JSON, left out")
            continue
        if isinstance(doc, dict):
            records.append(Record(doc))
        else:
            warnings.append(f"{RECORDS} line {number}: not a JSON object, left out")
    return records


def _read_facts(path: Path, warnings: list[str]) -> dict:
    if not path.exists():
        warnings.append(f"{FACTS}: absent (written by the run's controller at its end): backend and accelerator unknown")
        return {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        warnings.append(f"{FACTS}: unreadable ({exc})")
        return {}
    return doc if isinstance(doc, dict) else {}


def _evidence(run_dir: Path) -> dict[str, list[str]]:
    root = run_dir / EVIDENCE
    if not root.is_dir():
        return {}
    found = {}
    for test_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(str(f.relative_to(run_dir)) for f in test_dir.rglob("*") if f.is_file())
        if files:
            found[test_dir.name] = files
    return found


def load_run(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "not a folder" if run_dir.exists() else "no such folder"
        raise ReportError(f"{run_dir}: {what} (give a run's report folder, e.g. reports/<run-id>)")
    if not (run_dir / JUNIT).exists() and not (run_dir / RECORDS).exists():
        raise ReportError(f"{run_dir}: not a run's report folder (it has neither {JUNIT} nor {RECORDS})")
    warnings: list[str] = []
    outcomes = None
    if (run_dir / JUNIT).exists():
        try:
            outcomes = read_junit(run_dir / JUNIT)
        except ValueError as exc:
            warnings.append(str(exc))
    else:
        warnings.append(f"{JUNIT}: absent: test verdicts unknown")
    records = _read_records(run_dir / RECORDS, warnings)
    return RunData(run_dir, outcomes, records, _read_facts(run_dir / FACTS, warnings), _evidence(run_dir), warnings)


def load_series(run_dir: Path, record: dict) -> tuple[dict | None, str]:
    """The heartbeat/echo series sidecar a record points to (`"series": "series/<name>.json"`).

    Returns (series, "") or (None, why it is absent).
    """
    ref = record.get("series")
    if not ref:
        return None, "no series recorded for this migration"
    path = (run_dir / str(ref)).resolve()
    if run_dir.resolve() not in path.parents:
        return None, f"series {ref!r} points outside the run folder: not read"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"series file {ref} is missing"
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"series file {ref} is unreadable ({exc.__class__.__name__})"
    if not isinstance(doc, dict):
        return None, f"series file {ref} is not a JSON object"
    return doc, ""

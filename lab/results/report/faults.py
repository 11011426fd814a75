"""The report's fault section: one row per fault scenario (results.jsonl records of kind "fault"):
where the fault landed, what the guest ended as, the times from fault to detection and to recovery."""
from __future__ import annotations

from lab.results.report.runfiles import RunData


def faults_view(run: RunData) -> list[dict]:
    rows = []
    for r in run.of_kind("fault"):
        fault_run = r.get("fault_run") or {}
        second = r.get("second_migration") or {}
        verdict = r.get("verdict") or {}
        rows.append({"scenario": r.get("scenario"), "point": fault_run.get("point_means") or r.get("point"),
                     "injected": fault_run.get("injected"), "expected": r.get("expected"),
                     "ended_on": r.get("ended_on") or ("lost" if r.get("expected") == "lost" else None),
                     "states": r.get("domain_states") or {}, "error": r.get("error"),
                     "detection_s": r.get("detection_s"), "recovery_s": r.get("recovery_s"),
                     "second": (f"{second.get('src')} -> {second.get('dst')}: "
                                + ("ok" if second.get("ok") else f"failed: {second.get('error')}")) if second else None,
                     "findings": verdict.get("findings") or r.get("findings") or [],
                     "state": verdict.get("state"), "documented": r.get("documented"),
                     "outcome": run.outcome(r.get("test", ""))})
    return rows

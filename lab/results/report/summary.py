"""A run in a few figures (JSON), for comparing two runs: the stack, verdict totals, each test's
state and each scenario's probe statistics. Absent figures stay null."""
from __future__ import annotations

from dataclasses import asdict

from lab.results.report.junit import totals
from lab.results.report.live import PROBES, measured
from lab.results.report.runfiles import RunData
from lab.results.report.verdict import verdict_of
from lab.results.stats import Summary

FORMAT = 1


def _stats(values: list) -> dict | None:
    present = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return asdict(Summary.of(present)) if present else None


def run_summary(run: RunData) -> dict:
    scenarios: dict[str, dict] = {}
    for r in run.records:
        if measured(r):
            scenarios.setdefault(str(r.get("scenario")), {"records": []})["records"].append(r)
    verdicts = {str(r.get("scenario")): (verdict_of(r) or {}).get("label") for r in run.of_kind("live-migration-summary")}
    out_scenarios = {}
    for name, doc in scenarios.items():
        recs = doc["records"]
        entry = {p: _stats([(r.get("downtime_ms") or {}).get(p) for r in recs]) for p in PROBES}
        entry["total_s"] = _stats([r.get("total_s") for r in recs])
        entry["verdict"] = verdicts.get(name)
        out_scenarios[name] = entry
    versions = {}
    for r in run.records:
        for host, v in (r.get("versions") or {}).items():
            if isinstance(v, dict):
                versions[host] = {k: v.get(k) for k in ("qemu_version", "libvirt_version", "kernel")}
    return {"format": FORMAT, "run_id": run.run_id, "run_dir": str(run.run_dir),
            "backend": run.facts.get("backend"), "accelerator": run.facts.get("accelerator"), "versions": versions,
            "totals": totals(run.outcomes) if run.outcomes is not None else None,
            "tests": {o.nodeid: {"state": o.state, "reason": o.reason} for o in run.outcomes or []},
            "scenarios": out_scenarios}

"""Fixtures of the fault suite: the lab's fault injector, and a runner that records each scenario's
outcome, keeps evidence from both hosts and settles the test by its computed verdict."""
from __future__ import annotations

import pytest

from lab.backends import get_fault_injector
from lab.errors import LabError
from lab.results.evidence import collect
from lab.results.verdicts import Stack, judge
from suites.faults.runner import FaultCase


@pytest.fixture(scope="session")
def faults(lab_config, lab):
    try:
        return get_fault_injector(lab_config)
    except LabError as exc:
        pytest.skip(f"fault suite: {exc}")


@pytest.fixture
def run_fault(lab, faults, host_versions, known_defects, record, test_report_dir):
    """Run a scenario on the lab's pair, keep evidence from both hosts, write its record; returns
    (outcome, verdict). Faults break the pair's hosts, so callers hold the exclusive measurement lock."""

    def run(scenario, guest, sabotage=None):
        case = FaultCase(lab, faults, scenario, guest, sabotage)
        outcome = case.run()
        result = outcome.run.result if outcome.run else None
        kept = collect(lab, guest.name, test_report_dir / "evidence", result)
        stack = Stack.of(host_versions[lab.hosts[0].name], lab.accelerator, scenario.mode)
        verdict = judge(outcome.findings, stack, known_defects)
        doc = outcome.record()
        doc.update(verdict=verdict.as_record(), evidence=[str(p) for p in kept],
                   versions={h.name: host_versions[h.name] for h in lab.hosts})
        record(doc, {"fault_detection_s": doc["detection_s"], "fault_recovery_s": doc["recovery_s"]})
        return outcome, verdict

    return run

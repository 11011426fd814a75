"""Migrations that go wrong in the documented ways, and nothing lost (scenarios.py says what each
must end in, and why). Faults break the pair's hosts for a moment, so each test runs alone."""
from __future__ import annotations

import pytest

from lab.results.verdicts import Kind
from suites.faults.runner import copy_guest_onto
from suites.faults.scenarios import SCENARIOS

pytestmark = [pytest.mark.lab, pytest.mark.timing]


def _marks(scenario):
    return [pytest.mark.smoke] if scenario.smoke else []


@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.id, marks=_marks(s)) for s in SCENARIOS])
def test_fault(scenario, guest_factory, measurement_lock, run_fault, settle):
    """Pass, fail, or excused by a registered known defect whose signature matches (decided after the run)."""
    guest = guest_factory()
    _outcome, verdict = run_fault(scenario, guest)
    settle(verdict)


@pytest.mark.smoke
def test_guest_left_running_on_both_hosts_is_split_brain(guest_factory, measurement_lock, run_fault):
    """The checks broken on purpose: after an aborted precopy the guest is copied onto the destination
    too (a second QEMU, same name, no disk). The scenario must fail, naming the split brain."""
    scenario = next(s for s in SCENARIOS if s.id == "precopy-abort-job")
    guest = guest_factory()
    outcome, verdict = run_fault(scenario, guest, sabotage=lambda case: copy_guest_onto(case, case.dst))
    assert verdict.state == "fail", f"a guest running on both hosts was judged {verdict.state}: {verdict.why}"
    assert Kind.SPLIT_BRAIN in {f.kind for f in outcome.findings}, [str(f) for f in outcome.findings]
    assert not outcome.second_migration, "a split-brained guest must not be migrated again"
    # Which copy answers the agent is chance: its checks are not run, so the findings are the same every run.
    assert {f.kind for f in outcome.findings} == {Kind.SPLIT_BRAIN, Kind.HEARTBEAT_LOST}, [str(f) for f in outcome.findings]

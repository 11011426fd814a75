"""Preflight on the lab's host pair, one test per check (ids are the check names).

Every check the hosts can answer runs without a guest, for the lab's planned guest
(lab.yaml `guest:`), as `python -m lab doctor` does; only the checks that need an
existing guest (VM state, devices, disk cache) get one, made for them and removed.
A failing check fails its test with the check's own line: what was seen and the remedy.
The break tests (tests/test_preflight_breaks_hosts.py, tests/test_preflight_breaks_guests.py) prove
each check can fail.
"""
import pytest

from lab.guest.domain import create_guest, remove_guest
from lab.preflight import CHECKS, FAIL, SKIP, context_for, run_preflight

pytestmark = pytest.mark.lab
NEEDS_GUEST = [name for name, entry in CHECKS.items() if entry.needs_guest]


@pytest.fixture(scope="module")
def planned_results(lab, _measurement_lock):
    """Every check the hosts answer, for the planned guest: no guest exists for them."""
    # The lock is held while the checks run (they sample the migration link), never across the yield: a
    # second shared request while a writer waits at the turnstile would deadlock this worker against it.
    with _measurement_lock.shared():
        results = {r.name: r for r in run_preflight(context_for(lab), [n for n in CHECKS if n not in NEEDS_GUEST])}
    return results


@pytest.fixture(scope="module")
def guest_results(lab, _measurement_lock):
    """The checks only an existing guest answers, for a running guest on the first host."""
    with _measurement_lock.shared():  # while its guest runs (it shares the machine); not across a yield
        guest = create_guest(lab, lab.hosts[0])
        try:
            return {r.name: r for r in run_preflight(context_for(lab, guest=guest.name), NEEDS_GUEST)}
        finally:
            remove_guest(lab, guest)


@pytest.mark.smoke
@pytest.mark.parametrize("name", list(CHECKS))
def test_check(name, request, record_property):
    results = request.getfixturevalue("guest_results" if name in NEEDS_GUEST else "planned_results")
    result = results[name]
    record_property("preflight", result.line())
    assert result.status not in (FAIL, SKIP), result.line()


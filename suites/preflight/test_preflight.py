"""Preflight on the lab's host pair, one test per check (ids are the check names).

A failing check fails its test with the check's own line: what was seen and the remedy.
The break tests in tests/test_preflight_breaks.py prove each check can fail.
"""
import pytest

from lab.preflight import CHECKS, FAIL, context_for, run_preflight

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def preflight_results(lab, _measurement_lock):
    """All checks at once (they run in parallel), for a running guest on the first host."""
    from lab.guest.domain import create_guest, remove_guest

    with _measurement_lock.shared():  # held for the module: its guest shares the machine
        yield from _results_with_guest(lab, create_guest, remove_guest)


def _results_with_guest(lab, create_guest, remove_guest):
    guest = create_guest(lab, lab.hosts[0])
    try:
        guest.domain().migrateSetMaxDowntime(300, 0)
        ctx = context_for(lab, guest=guest.name, max_downtime_ms=300, bandwidth_mibs=0)
        yield {r.name: r for r in run_preflight(ctx)}
    finally:
        remove_guest(lab, guest)


@pytest.mark.smoke
@pytest.mark.parametrize("name", list(CHECKS))
def test_check(name, preflight_results, record_property):
    result = preflight_results[name]
    record_property("preflight", result.line())
    assert result.status != FAIL, result.line()

"""The guest's slowdown during a migration, from the work totals its heartbeats carry (lab/migration/degradation.py),
on receivers filled with a known series: the real code, fed the pace a throttled guest would have."""
from __future__ import annotations

import pytest

from lab.guest.probes import EchoProber, HeartbeatReceiver
from lab.migration.degradation import WINDOW_NS, degradation, degradation_findings
from lab.results.verdicts import Kind

S = 1_000_000_000


@pytest.fixture
def probes():
    hb, echo = HeartbeatReceiver("127.0.0.1"), EchoProber("127.0.0.1", "127.0.0.1", port=9, interval_us=10**6)
    yield hb, echo
    hb.close()
    echo.close()


def feed(hb: HeartbeatReceiver, start_ns: int, end_ns: int, unit_us, stop: tuple[int, int] = (0, 0)) -> None:
    """A heartbeat every ms from start to end; a sample of work (one unit here) every 10 ms taking `unit_us` (a
    number, or a function of the sample's time); nothing while stopped."""
    units = hb.work_units[-1] if hb.work_units else 0
    spent = hb.work_ns[-1] if hb.work_ns else 0
    for t in range(start_ns, end_ns, 1_000_000):
        if stop[0] <= t < stop[1]:
            continue
        if (t // 1_000_000) % 10 == 0:
            units += 1
            spent += int((unit_us(t) if callable(unit_us) else unit_us) * 1000)
        hb.boot_of.append(0)
        hb.work_units.append(units)
        hb.work_ns.append(spent)
        hb.seqs.append(len(hb.seqs) + 1)
        hb.times.append(t)


def test_a_guest_four_times_slower_during_the_migration_is_a_finding(probes):
    hb, echo = probes
    t0 = 1000 * S
    feed(hb, t0, t0 + 3 * S, 100)  # before: 100 us a unit
    feed(hb, t0 + 3 * S, t0 + 6 * S, 400, stop=(t0 + 5 * S, t0 + 5 * S + 300_000_000))  # during, then stopped 300 ms
    feed(hb, t0 + 6 * S, t0 + 8 * S, 100)
    doc = degradation(hb, echo, t0 + 3 * S, t0 + 6 * S, t0 + 8 * S, gap=(t0 + 5 * S - 10**6, t0 + 5 * S + 300_000_000))
    assert doc["before"]["unit_us_p50"] == 100 and doc["during"]["unit_us_p50"] == 400
    assert doc["after"]["unit_us_p50"] == 100 and doc["unit_slowdown_worst_window"] == 4.0
    assert doc["during"]["windows"] == 3 * S // WINDOW_NS - 3  # the stopped windows are downtime, not pace
    assert doc["slowdown"] == pytest.approx(4.0, abs=0.1) and doc["pace_during_pct"] == pytest.approx(25, abs=1)
    found = degradation_findings(doc, limit=3)
    assert [f.kind for f in found] == [Kind.DEGRADATION] and "3.9" in found[0].text and "times slower" in found[0].text


def test_a_throttled_guest_is_a_finding(probes):
    """Auto-converge puts the vCPU to sleep for slices of every period: a sample that lands in one takes the sleep
    with it. The median sample does not show it; the rate over the whole phase (its totals) does."""
    hb, echo = probes
    t0 = 3000 * S
    feed(hb, t0, t0 + 3 * S, 100)
    # Every other sample lands in a throttle sleep of 5 ms and takes it with it; the median sample does not show it.
    feed(hb, t0 + 3 * S, t0 + 7 * S, lambda t: 5100 if (t // 10_000_000) % 2 else 100)
    feed(hb, t0 + 7 * S, t0 + 9 * S, 100)
    doc = degradation(hb, echo, t0 + 3 * S, t0 + 7 * S, t0 + 9 * S)
    assert doc["slowdown"] == pytest.approx(26, abs=0.5)
    found = degradation_findings(doc, limit=1.5)
    assert [f.kind for f in found] == [Kind.DEGRADATION] and "times slower" in found[0].text
    assert degradation_findings(doc, limit=30) == [] and degradation_findings(doc, limit=None) == []


def test_a_migration_between_two_heartbeats_has_no_slowdown_figure(probes):
    hb, echo = probes
    t0 = 2000 * S
    feed(hb, t0, t0 + 3 * S, 100)
    doc = degradation(hb, echo, t0 + 2 * S + 100_000, t0 + 2 * S + 600_000, t0 + 3 * S)
    assert doc["slowdown"] is None and degradation_findings(doc, limit=1.5) == []

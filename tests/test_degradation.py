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


def feed(hb: HeartbeatReceiver, start_ns: int, end_ns: int, unit_us: float, stop: tuple[int, int] = (0, 0)) -> None:
    """A heartbeat every ms from start to end; a unit of work every 10 ms taking `unit_us`; nothing while stopped."""
    units = hb.work_units[-1] if hb.work_units else 0
    spent = hb.work_ns[-1] if hb.work_ns else 0
    for t in range(start_ns, end_ns, 1_000_000):
        if stop[0] <= t < stop[1]:
            continue
        if (t // 1_000_000) % 10 == 0:
            units += 1
            spent += int(unit_us * 1000)
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
    doc = degradation(hb, echo, t0 + 3 * S, t0 + 6 * S, t0 + 8 * S, stopped_ns=300_000_000)
    assert doc["before"]["unit_us_p50"] == 100 and doc["during"]["unit_us_p50"] == 400
    assert doc["after"]["unit_us_p50"] == 100 and doc["unit_slowdown_worst_window"] == 4.0
    assert doc["during"]["windows"] == 3 * S // WINDOW_NS - 3  # the stopped windows are downtime, not pace
    # Units were done at the same pace (one per 10 ms) but each took longer: no slowdown in pace here.
    assert doc["slowdown"] == pytest.approx(1.0, abs=0.02)


def test_a_throttled_guest_doing_half_its_work_is_a_finding(probes):
    """Auto-converge stops the vCPU for slices of every period: fewer units get done, and the windows in which
    the guest sent nothing would hide it from a per-window median; the pace over the whole phase does not."""
    hb, echo = probes
    t0 = 3000 * S
    feed(hb, t0, t0 + 3 * S, 100)
    for k in range(20):  # 20 periods of 200 ms: running 100 ms, stopped 100 ms
        start = t0 + 3 * S + k * 200_000_000
        feed(hb, start, start + 200_000_000, 100, stop=(start + 100_000_000, start + 200_000_000))
    feed(hb, t0 + 7 * S, t0 + 9 * S, 100)
    doc = degradation(hb, echo, t0 + 3 * S, t0 + 7 * S, t0 + 9 * S, stopped_ns=100_000_000)
    assert doc["slowdown"] == pytest.approx(2.0, abs=0.1) and doc["pace_during_pct"] == pytest.approx(50, abs=3)
    found = degradation_findings(doc, limit=1.5)
    assert [f.kind for f in found] == [Kind.DEGRADATION] and "times slower" in found[0].text
    assert degradation_findings(doc, limit=3) == [] and degradation_findings(doc, limit=None) == []


def test_a_migration_shorter_than_a_window_has_no_slowdown_figure(probes):
    hb, echo = probes
    t0 = 2000 * S
    feed(hb, t0, t0 + 3 * S, 100)
    doc = degradation(hb, echo, t0 + 2 * S, t0 + 2 * S + 50_000_000, t0 + 3 * S)
    assert doc["slowdown"] is None and degradation_findings(doc, limit=1.5) == []

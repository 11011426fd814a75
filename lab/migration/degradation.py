"""The guest's slowdown while it is migrated: "no perceived service interruption or performance degradation".

Downtime is the interruption; this is the degradation. The agent's steady work (agent work.c: 0.5 ms of
memory updates as fast as it can every 10 ms, its running totals in every heartbeat) gives the guest's work
rate, and per WINDOW_NS window how long one unit took; the echo probes give the guest's response time. Both are summed up before the migration (the
BEFORE_S before it starts), during it (start to completion, the windows in which the guest was stopped left
out: that is the downtime, counted there) and after it (completion to the end of the measurement window).
The slowdown is the work rate before (units per second of sampling) over the rate during, the switchover's stop
left out; the median unit time per window and the worst window are reported beside it.
"""
from __future__ import annotations

import bisect
import statistics

from lab.guest.probes import EchoProber, HeartbeatReceiver
from lab.results.stats import percentile
from lab.results.verdicts import Finding, Kind

WINDOW_NS = 100_000_000
BEFORE_S = 2.0
# A migration shorter than this is mostly its own switchover (under TCG the guest then restarts with an empty
# translation cache): its slowdown is recorded, not judged. Seen on a 1 s idle move: 2.4 and 4.4 in two runs.
JUDGED_FROM_S = 2.0


def _rate(hb: HeartbeatReceiver, start_ns: int, end_ns: int, gap: tuple[int, int] | None = None) -> float | None:
    """The guest's work rate over [start, end], units per second of the time its samples took, from the totals of
    the first and last heartbeat; the heartbeats on either side of `gap` (the switchover's stop: a sample in
    progress then took the downtime with it, which is not a slowdown) left out."""
    first, last = bisect.bisect_left(hb.times, start_ns), bisect.bisect_right(hb.times, end_ns) - 1
    if last - first < 1 or hb.boot_of[first] != hb.boot_of[last]:
        return None
    units, spent = hb.work_units[last] - hb.work_units[first], hb.work_ns[last] - hb.work_ns[first]
    if gap is not None:
        before = bisect.bisect_right(hb.times, gap[0]) - 1
        if first <= before < last:
            units -= hb.work_units[before + 1] - hb.work_units[before]
            spent -= hb.work_ns[before + 1] - hb.work_ns[before]
    return round(units / spent * 1e9, 1) if spent > 0 and units > 0 else None


def _phase(hb: HeartbeatReceiver, echo: EchoProber, start_ns: int, end_ns: int,
           gap: tuple[int, int] | None = None) -> dict:
    windows = [w for w in hb.pace(start_ns, end_ns, WINDOW_NS) if w[1] > 0]
    rtts = echo.round_trips_us(start_ns, end_ns)
    doc = {"units_per_s": _rate(hb, start_ns, end_ns, gap), "windows": len(windows),
           "echo_rtt_us_p50": round(percentile(rtts, 50), 1) if rtts else None,
           "echo_rtt_us_p99": round(percentile(rtts, 99), 1) if rtts else None}
    if windows:
        worst = max(windows, key=lambda w: w[2])
        doc.update(unit_us_p50=round(statistics.median(us for _t, _u, us in windows), 1),
                   unit_us_worst=round(worst[2], 1), worst_window_ns=worst[0])
    return doc


def degradation(hb: HeartbeatReceiver, echo: EchoProber, started_ns: int, finished_ns: int, end_ns: int,
                gap: tuple[int, int] | None = None) -> dict:
    """before / during / after, and the slowdown: the work rate before over the rate during (the switchover's
    stop, `gap`, left out of the latter: it is the downtime). None where a phase had too little to measure."""
    doc = {"window_ms": WINDOW_NS / 1e6, "during_s": round((finished_ns - started_ns) / 1e9, 3),
           "before": _phase(hb, echo, started_ns - int(BEFORE_S * 1e9), started_ns),
           "during": _phase(hb, echo, started_ns, finished_ns, gap),
           "after": _phase(hb, echo, finished_ns, end_ns)}
    before, during = doc["before"].get("units_per_s"), doc["during"].get("units_per_s")
    doc["slowdown"] = round(before / during, 2) if before and during else None
    doc["pace_during_pct"] = round(100 * during / before, 1) if before and during else None
    base = doc["before"].get("unit_us_p50")
    doc["unit_slowdown_worst_window"] = round(doc["during"]["unit_us_worst"] / base, 1) \
        if base and doc["during"].get("unit_us_worst") else None
    return doc


def pace_series(hb: HeartbeatReceiver, started_ns: int, end_ns: int) -> dict:
    """The per-window pace for the report's timeline (series sidecar): [window start ns, units, µs per unit]
    from BEFORE_S before the migration to `end_ns`; a window with no heartbeat has 0 units."""
    windows = hb.pace(started_ns - int(BEFORE_S * 1e9), end_ns, WINDOW_NS)
    return {"pace_window_ns": WINDOW_NS, "pace": [[t, units, round(us, 2)] for t, units, us in windows]}


def degradation_findings(doc: dict, limit: float | None) -> list[Finding]:
    """A finding when the guest's work ran more than `limit` times slower during the migration."""
    slowdown = doc.get("slowdown")
    if limit is None or slowdown is None or slowdown <= limit or doc.get("during_s", 0) < JUDGED_FROM_S:
        return []
    before, during = doc["before"], doc["during"]
    worst = doc.get("unit_slowdown_worst_window")
    return [Finding(Kind.DEGRADATION, f"the guest's work ran {slowdown:g} times slower during the migration than "
                                      f"before it ({during['units_per_s']:g} units/s against {before['units_per_s']:g}, "
                                      f"the switchover's stop left out; a unit's worst window "
                                      f"{'-' if worst is None else f'{worst:g} times'} its time before), beyond the "
                                      f"limit of {limit:g}")]

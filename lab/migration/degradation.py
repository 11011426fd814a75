"""The guest's slowdown while it is migrated: "no perceived service interruption or performance degradation".

Downtime is the interruption; this is the degradation. The agent's steady work (agent work.c: a fixed unit of
memory updates every 10 ms, its running totals in every heartbeat) gives, per WINDOW_NS window, how long one
unit took; the echo probes give the guest's response time. Both are summed up before the migration (the
BEFORE_S before it starts), during it (start to completion, the windows in which the guest was stopped left
out: that is the downtime, counted there) and after it (completion to the end of the measurement window).
The slowdown is the median unit time during over the median before; the worst window is reported beside it.
"""
from __future__ import annotations

import statistics

from lab.guest.probes import EchoProber, HeartbeatReceiver
from lab.results.stats import percentile
from lab.results.verdicts import Finding, Kind

WINDOW_NS = 100_000_000
BEFORE_S = 2.0


def _phase(hb: HeartbeatReceiver, echo: EchoProber, start_ns: int, end_ns: int) -> dict:
    windows = [w for w in hb.pace(start_ns, end_ns, WINDOW_NS) if w[1] > 0]
    rtts = echo.round_trips_us(start_ns, end_ns)
    if not windows:
        return {"windows": 0}
    units = [u for _t, u, _us in windows]
    unit_us = [us for _t, _u, us in windows]
    worst = max(windows, key=lambda w: w[2])
    return {"windows": len(windows), "units_per_s": round(sum(units) / (len(windows) * WINDOW_NS / 1e9), 1),
            "unit_us_p50": round(statistics.median(unit_us), 1), "unit_us_worst": round(worst[2], 1),
            "worst_window_ns": worst[0],
            "echo_rtt_us_p50": round(percentile(rtts, 50), 1) if rtts else None,
            "echo_rtt_us_p99": round(percentile(rtts, 99), 1) if rtts else None}


def degradation(hb: HeartbeatReceiver, echo: EchoProber, started_ns: int, finished_ns: int, end_ns: int) -> dict:
    """before / during / after, and the slowdown factors (None where a phase had no window to measure)."""
    doc = {"window_ms": WINDOW_NS / 1e6,
           "before": _phase(hb, echo, started_ns - int(BEFORE_S * 1e9), started_ns),
           "during": _phase(hb, echo, started_ns, finished_ns),
           "after": _phase(hb, echo, finished_ns, end_ns)}
    base = doc["before"].get("unit_us_p50")
    during = doc["during"]
    if base and during.get("unit_us_p50"):
        doc["slowdown"] = round(during["unit_us_p50"] / base, 2)
        doc["slowdown_worst_window"] = round(during["unit_us_worst"] / base, 2)
        doc["pace_during_pct"] = round(100 * during["units_per_s"] / doc["before"]["units_per_s"], 1)
    else:
        doc["slowdown"] = doc["slowdown_worst_window"] = doc["pace_during_pct"] = None
    return doc


def degradation_findings(doc: dict, limit: float | None) -> list[Finding]:
    """A finding when the guest's work ran more than `limit` times slower during the migration."""
    slowdown = doc.get("slowdown")
    if limit is None or slowdown is None or slowdown <= limit:
        return []
    before, during = doc["before"], doc["during"]
    return [Finding(Kind.DEGRADATION, f"the guest's work ran {slowdown:g} times slower during the migration than "
                                      f"before it (a unit took {during['unit_us_p50']:g} us, median of "
                                      f"{during['windows']} windows, against {before['unit_us_p50']:g} us; worst "
                                      f"window {doc['slowdown_worst_window']:g} times; pace {doc['pace_during_pct']:g}% "
                                      f"of before), beyond the limit of {limit:g}")]

"""Per-migration timelines from the series sidecar (issue 12's format): inter-arrival gaps of the
guest's heartbeats and of the echo replies, the migration's start/end and libvirt's pause/resume,
and every gap above three heartbeat periods.

Sidecar keys: `heartbeat_ns` (arrival times), `echo_ns` (reply times), `started_ns`,
`finished_ns`, optionally `paused_ns` / `resumed_ns`; all CLOCK_REALTIME nanoseconds. Optionally `pace`:
[window start ns, units, µs per unit] per `pace_window_ns` (lab/migration/degradation.py), the guest's work
rate drawn beside the gaps as a share of its pace before the migration.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

OVER_PERIODS = 3  # gaps above this many heartbeat periods are listed one by one


@dataclass
class Gap:
    probe: str  # "heartbeat" | "echo"
    at_s: float | None  # when the gap began, seconds from the timeline's origin (None: origin unknown)
    ms: float


@dataclass
class Timeline:
    origin: str  # what t = 0 is ("migration start" or "first heartbeat")
    origin_ns: int
    heartbeat: list[Gap]
    echo: list[Gap]
    markers: dict[str, float]  # started / finished / paused / resumed, seconds from the origin (present ones only)
    absent_markers: list[str]
    period_ms: float | None
    period_source: str
    over: list[Gap] = field(default_factory=list)
    action: str = "migration"  # what started and finished: a migration, or a hot patch's apply / unapply
    # The guest's work pace per window, % of its median before the start (None: no heartbeat in the window);
    # empty with the reason in pace_absent when the series has none or nothing before the start to compare with.
    pace: list[tuple[float, float | None]] = field(default_factory=list)
    pace_absent: str = ""

    @property
    def threshold_ms(self) -> float | None:
        return self.period_ms * OVER_PERIODS if self.period_ms else None


def _times(series: dict, key: str) -> list[int]:
    values = series.get(key)
    if not isinstance(values, list):
        return []
    return sorted(int(v) for v in values if isinstance(v, (int, float)))


def gaps(times: list[int], origin_ns: int, probe: str) -> list[Gap]:
    """One Gap per consecutive pair of arrivals, placed where the gap began."""
    return [Gap(probe, (a - origin_ns) / 1e9, (b - a) / 1e6) for a, b in zip(times, times[1:])]


def heartbeat_period_ms(series: dict, record: dict, facts: dict) -> tuple[float | None, str]:
    """The heartbeat period, from the first place that states it; (None, why) when none does."""
    for where, doc, key, scale in (("series", series, "period_ns", 1e-6), ("series", series, "heartbeat_period_ns", 1e-6),
                                   ("series", series, "period_ms", 1.0), ("record", record, "heartbeat_period_ms", 1.0),
                                   ("record", record.get("heartbeats") or {}, "period_ms", 1.0),
                                   ("lab.json (lab.yaml guest.heartbeat_us)", facts, "heartbeat_period_ms", 1.0)):
        value = doc.get(key) if isinstance(doc, dict) else None
        if isinstance(value, (int, float)) and value > 0:
            return value * scale, where
    return None, "absent: neither the series, the record nor lab.json states the heartbeat period"


def pace(series: dict, origin_ns: int, started_ns: int | None) -> tuple[list[tuple[float, float | None]], str]:
    """The work pace per window as a share of the median before `started_ns`; ([], why) when it cannot be drawn."""
    windows = [w for w in series.get("pace") or [] if isinstance(w, list) and len(w) == 3]
    if not windows:
        return [], "the series has no work pace (recorded before the guest's pace was kept, or by a hot patch)"
    before = [us for t, units, us in windows if started_ns is not None and t + series.get("pace_window_ns", 0)
              <= started_ns and units > 0 and us > 0]
    if not before:
        return [], "no window before the start with the guest's work in it: nothing to compare the pace with"
    base = statistics.median(before)
    return [((t - origin_ns) / 1e9, round(100 * base / us, 1) if units > 0 and us > 0 else None)
            for t, units, us in windows], ""


def timeline(series: dict, record: dict, facts: dict) -> Timeline:
    hb, echo = _times(series, "heartbeat_ns"), _times(series, "echo_ns")
    named = {k: series.get(f"{k}_ns") for k in ("started", "finished", "paused", "resumed")}
    named = {k: v for k, v in named.items() if isinstance(v, (int, float))}
    action = str(series.get("action") or "migration")
    if "started" in named:
        origin_ns, origin = int(named["started"]), f"{action} start"
    elif hb:
        origin_ns, origin = hb[0], "first heartbeat"
    else:
        origin_ns, origin = (echo[0] if echo else 0), "first echo reply"
    period, source = heartbeat_period_ms(series, record, facts)
    line = Timeline(origin, origin_ns, gaps(hb, origin_ns, "heartbeat"), gaps(echo, origin_ns, "echo"),
                    {k: (v - origin_ns) / 1e9 for k, v in named.items()},
                    [k for k in ("started", "finished", "paused", "resumed") if k not in named], period, source,
                    action=action)
    line.pace, line.pace_absent = pace(series, origin_ns, named.get("started"))
    if line.threshold_ms:
        line.over = [g for g in line.heartbeat + line.echo if g.ms > line.threshold_ms]
        line.over.sort(key=lambda g: g.at_s)
    return line


def largest(gap_list: list[Gap]) -> Gap | None:
    return max(gap_list, key=lambda g: g.ms) if gap_list else None


def recorded_stalls(record: dict, origin_ns: int | None) -> list[Gap] | None:
    """The harness's own list of gaps above three probe periods (record heartbeats/echo `stalls`:
    [start ns, ms] pairs), or None when the record has no such list."""
    found, any_list = [], False
    for probe, key in (("heartbeat", "heartbeats"), ("echo", "echo")):
        stalls = (record.get(key) or {}).get("stalls")
        if not isinstance(stalls, list):
            continue
        any_list = True
        for item in stalls:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                start, ms = item
                at = (start - origin_ns) / 1e9 if origin_ns is not None else None
                found.append(Gap(probe, at, float(ms)))
    return sorted(found, key=lambda g: g.at_s) if any_list else None

"""The live migration part of the report: per scenario, each probe's samples against its limit,
total time, iterations, bytes, the verdict and what decided it; per migration, its timeline."""
from __future__ import annotations

from pathlib import Path

from lab.calibration.model import Calibration
from lab.results.report import plots
from lab.results.report.runfiles import RunData, load_series
from lab.results.report.series import largest, recorded_stalls, timeline
from lab.results.report.verdict import findings_of, verdict_of
from lab.results.stats import Summary

PROBES = ("hypervisor", "guest", "network")
PROBE_LABELS = {"hypervisor": "hypervisor (libvirt)", "guest": "guest (heartbeats)", "network": "network (echo)"}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))[:80]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def measured(record: dict) -> bool:
    """A record of a measured migration: it carries the probes' downtime figures."""
    return record.get("kind") == "live-migration" and isinstance(record.get("downtime_ms"), dict)


def _limit(records: list[dict], summary: dict | None, key: str, probe: str | None = None) -> float | None:
    for doc in [summary or {}, *records]:
        limits = doc.get("thresholds") or {}
        value = (limits.get(key) or {}).get(probe) if probe else limits.get(key)
        if _number(value) is not None:
            return float(value)
    return None


def _bytes(stats: dict) -> float | None:
    if _number(stats.get("data_processed")) is not None:
        return float(stats["data_processed"])
    parts = [_number(stats.get(k)) for k in ("memory_processed", "disk_processed")]
    return sum(p for p in parts if p is not None) if parts[0] is not None else None


def _migration(run: RunData, record: dict, scenario: str, index: int, out_dir: Path) -> dict:
    stats = record.get("libvirt_stats") or {}
    downtime = record.get("downtime_ms") or {}
    item = {"repetition": record.get("repetition"), "of": record.get("of"), "src": record.get("src"),
            "dst": record.get("dst"), "ok": record.get("ok"), "error": record.get("error") or "",
            "verdict": verdict_of(record),
            "downtime": {p: _number(downtime.get(p)) for p in PROBES}, "total_s": _number(record.get("total_s")),
            "iterations": _number(stats.get("memory_iteration")), "bytes": _bytes(stats),
            "stats_note": record.get("libvirt_stats_note") or "",
            "findings": findings_of(record, "invariant_failures", "findings", "integrity"),
            "baseline_gap_ms": _number(record.get("baseline_gap_ms")), "timeline": None, "timeline_absent": "",
            "threshold_ms": None, "origin": "migration start", "absent_markers": [], "largest": {},
            "pace_absent": "", "pace_lowest": None,
            "echo_beyond": ((record.get("echo") or {}).get("beyond_guest") or {}).get("text", "")}
    series, why = load_series(run.run_dir, record)
    line = timeline(series, record, run.facts) if series is not None else None
    if line is not None and not line.heartbeat and not line.echo:
        line, why = None, f"series {record.get('series')} holds no heartbeat or echo times"
    started = record.get("started_ns") if isinstance(record.get("started_ns"), int) else None
    stalls = recorded_stalls(record, line.origin_ns if line else started)
    if stalls is not None:  # the harness's own list of every gap above three probe periods
        item.update(gaps_over=stalls, gaps_source="the harness's list in the record")
        if line is not None:
            line.over = stalls
    elif line is not None and line.threshold_ms:
        item.update(gaps_over=line.over, gaps_source=f"the series, 3 heartbeat periods (period from {line.period_source})")
    else:
        item.update(gaps_over=None, gaps_source=line.period_source if line else "no stall list in the record")
    if line is None:
        item["timeline_absent"] = why
        return item
    title = f"{scenario} #{record.get('repetition', index)}: {record.get('src', '?')} -> {record.get('dst', '?')}"
    item.update(timeline=plots.gap_timeline(line, title, out_dir, f"timeline-{slug(scenario)}-{index}.png"),
                threshold_ms=line.threshold_ms, origin=line.origin, absent_markers=line.absent_markers,
                largest={p: largest(g) for p, g in (("heartbeat", line.heartbeat), ("echo", line.echo))},
                pace_absent=line.pace_absent, pace_lowest=_lowest_pace(line))
    return item


def _lowest_pace(line) -> float | None:
    """The slowest window's pace (% of before) from the start to the end of the move; None when not measured."""
    start, end = line.markers.get("started"), line.markers.get("finished")
    during = [pct for at, pct in line.pace if pct is not None and start is not None and end is not None
              and start <= at < end]
    return min(during) if during else None


def _decided(summary: dict | None, stats: dict[str, Summary | None], limits: dict[str, float | None]) -> list[str]:
    """What decided the verdict: its own reason and findings, then each figure against its limit on the
    statistic the harness judged (the summary's `basis`; p95 and max both shown where it names none)."""
    verdict = verdict_of(summary)
    if summary is None or verdict is None:
        return []
    lines = ([verdict["why"]] if verdict["why"] else []) + verdict["findings"]
    recorded = summary.get("summaries") or {}
    where = (summary.get("thresholds") or {}).get("basis") or {}  # "model 120 ms, factor 3", an override's reason
    for key, s in stats.items():
        figures = recorded.get(key) or (vars(s) if s else None)
        limit = limits.get(key)
        if not figures or limit is None:
            continue
        unit = "s" if key == "total_s" else "ms"
        basis = figures.get("basis")
        picks = [("max" if basis.startswith("max") else "p95", basis)] if basis else [("p95", "p95"), ("max", "max")]
        parts = [f"{label} {figures[stat]:.1f} {unit} {'<=' if figures[stat] <= limit else '>'} {limit:g} {unit}"
                 for stat, label in picks if _number(figures.get(stat)) is not None]
        lines.append(f"{key}: " + "; ".join(parts) + ("" if basis else f" (n={figures.get('n')})")
                     + (f"; limit: {where[key]}" if where.get(key) else ""))
    cal = summary.get("calibration")
    if cal:
        model = (summary.get("thresholds") or {}).get("model") or {}
        lines.append("the limits follow from this lab's calibration: " + "; ".join(Calibration(**cal).lines())
                     + (f"; the model: {model['how']}" if model.get("how") else ""))
    return lines


def scenario_view(run: RunData, scenario: str, records: list[dict], summary: dict | None, out_dir: Path) -> dict:
    panels, stats, limits = [], {}, {}
    for probe in PROBES:
        values = [_number((r.get("downtime_ms") or {}).get(probe)) for r in records]
        present = [v for v in values if v is not None]
        limits[probe] = _limit(records, summary, "downtime_ms", probe)
        stats[probe] = Summary.of(present) if present else None
        panels.append({"label": PROBE_LABELS[probe], "key": probe, "values": present, "limit": limits[probe],
                       "unit": "ms", "absent": len(values) - len(present)})
    totals = [_number(r.get("total_s")) for r in records]
    present = [v for v in totals if v is not None]
    limits["total_s"] = _limit(records, summary, "total_s")
    stats["total_s"] = Summary.of(present) if present else None
    panels.append({"label": "total time", "key": "total_s", "values": present, "limit": limits["total_s"],
                   "unit": "s", "absent": len(totals) - len(present)})
    test = records[0].get("test", "") if records else (summary or {}).get("test", "")
    outcome = run.outcome(test) if test else None
    plot = plots.probe_strips(panels, f"{scenario}: downtime per probe and total time against the limits",
                              out_dir, f"probes-{slug(scenario)}.png")
    return {"id": scenario, "anchor": "live-" + slug(scenario), "test": test, "outcome": outcome,
            "verdict": verdict_of(summary), "decided": _decided(summary, stats, limits),
            "stats": stats, "limits": limits, "plot": plot,
            "migrations": [_migration(run, r, scenario, i, out_dir) for i, r in enumerate(records, 1)]}


def live_views(run: RunData, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """(measured scenarios, other live migration records: aborts, cancels, refusals, settings)."""
    grouped: dict[str, list[dict]] = {}
    for r in run.records:
        if measured(r):
            grouped.setdefault(str(r.get("scenario", "unnamed")), []).append(r)
    summaries = {str(r.get("scenario")): r for r in run.of_kind("live-migration-summary")}
    scenarios = [scenario_view(run, name, recs, summaries.get(name), out_dir) for name, recs in grouped.items()]
    scenarios += [scenario_view(run, name, [], s, out_dir) for name, s in summaries.items() if name not in grouped]
    others = []
    for r in run.records:
        if (r.get("kind") == "live-migration" and not measured(r)) or \
                r.get("kind") in ("bandwidth", "summary", "oracle-migration"):
            outcome = run.outcome(r.get("test", "")) if r.get("test") else None
            check = r.get("paused_destination_check") if isinstance(r.get("paused_destination_check"), dict) else {}
            figures = {k: r[k] for k in ("configured_mibs", "measured_mibs", "configured_max_downtime_ms") if k in r}
            figures.update({f"oracle {k}": check[k] for k in ("checked_pages", "wrong") if k in check})
            others.append({"kind": r.get("kind"), "scenario": r.get("scenario"), "ok": r.get("ok"),
                           "error": "; ".join(filter(None, [r.get("error") or "", *findings_of(r, "findings")])),
                           "aborted": r.get("aborted"), "outcome": outcome, "figures": figures,
                           "hypervisor_ms": _number((r.get("downtime_ms") or {}).get("hypervisor"))})
    return scenarios, others

"""A measured live migration: the three downtime probes, the invariants, the verdict, the record.

1. hypervisor: libvirt's completed-job `downtime`, read on the destination (absent stays absent);
2. guest: gaps between the guest agent's heartbeats at the runner (every stall kept, not only the largest);
3. network: gaps between replies to the runner's UDP echo probes.

Every figure is measured or None; a missing one is a finding that names the field, never a 0.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

from lab.calibration.model import throttle_sleep_ms
from lab.config.thresholds import PROBES, JudgedLimits, Thresholds, Tolerance
from lab.guest.domain import Guest
from lab.guest.probes import GapStats
from lab.migration.degradation import degradation, pace_series
from lab.migration.echo_hops import echo_beyond_guest
from lab.migration.honoured import (ConnectionCounter, Observed, dirty_rate_before, settings_findings,
                                    statistics_findings)
from lab.migration.live import MigrationParams, MigrationResult, migrate
from lab.results.stats import Summary
from lab.results.verdicts import Finding, Kind
from lab.runtime.hosts import Host
from lab.util.progress import StatusLine

SETTLE_MAX_S = 3.0  # longest wait, after completion, for both probes to hear the guest again
SETTLE_PACKETS = 20  # this many heartbeats and echo replies after completion close the window
BASELINE_S = 1.0  # the window before the migration whose largest gap is the guest's normal jitter
# Echo replies lost beyond what the stalls explain (one probe per period of stall); seen: never above
# half the stalled periods under TCG. A few more are jitter at a stall's edges.
ECHO_LOSS_SLACK = 5


def _probe_doc(stats: GapStats) -> dict:
    return {**asdict(stats), "stalled_ms": stats.stalled_ms, "stall_count": len(stats.stalls)}


@dataclass
class Measurement:
    scenario: str
    result: MigrationResult
    downtime_ms: dict[str, float | None]
    heartbeats: dict
    echo: dict
    findings: list[Finding] = field(default_factory=list)
    harness_s: float = 0.0  # wall time the harness spent beyond the migration API call
    baseline_gap_ms: float | None = None  # the largest heartbeat gap in the second before the migration
    series: dict = field(default_factory=dict)  # arrival times for the report's timeline (sidecar file)
    observed: Observed = field(default_factory=Observed)  # what shows the settings were used (honoured.py)
    degradation: dict = field(default_factory=dict)  # the guest's pace before, during, after (degradation.py)

    @property
    def total_s(self) -> float | None:
        elapsed = self.result.stats.get("time_elapsed")
        return None if elapsed is None else elapsed / 1000.0

    def record(self, versions: dict, limits: JudgedLimits) -> dict:
        return {
            "kind": "live-migration", "scenario": self.scenario, "mode": self.result.params.mode,
            "params": asdict(self.result.params), "src": self.result.src, "dst": self.result.dst,
            "ok": self.result.ok, "error": self.result.error, "aborted": self.result.aborted,
            "switched_to_postcopy": self.result.switched_to_postcopy,
            "started_ns": self.result.started_ns, "finished_ns": self.result.finished_ns,
            "downtime_ms": self.downtime_ms, "total_s": self.total_s, "wall_s": self.result.wall_s,
            "libvirt_stats": self.result.stats, "libvirt_stats_note": self.result.stats_note,
            "heartbeats": self.heartbeats, "echo": self.echo, "baseline_gap_ms": self.baseline_gap_ms,
            "findings": [{"kind": f.kind.value, "text": f.text} for f in self.findings], "harness_s": self.harness_s,
            "thresholds": {"downtime_ms": limits.downtime_ms, "total_s": limits.total_s, "basis": limits.basis},
            "versions": versions, "observed": asdict(self.observed), "degradation": self.degradation,
            "throttle_max_pct": self.result.throttle_max_pct,
            "dirty_rate_reported_mibs": self.result.dirty_rate_reported_mibs,
            "qemu_events": self.result.qemu_events,
        }


AFTER_NS = 1_200_000_000  # how much of the guest's pace after the move the record keeps


def measure_migration(scenario: str, guest: Guest, src: Host, dst: Host, params: MigrationParams,
                      period_ms: float, tolerance: Tolerance, echo_interval_us: int = 1000,
                      dirty_mibs_asked: float = 0, dirty_region_mib: float = 0) -> Measurement:
    """Migrate `guest` from src to dst with all three probes running; the guest follows on success."""
    began = time.monotonic()
    observed = Observed()
    if dirty_mibs_asked:
        observed.dirty_mibs_before = dirty_rate_before(guest, dirty_mibs_asked)
    prober = guest.echo_prober(echo_interval_us)
    _wait_for(lambda: prober.replies() >= SETTLE_PACKETS, SETTLE_MAX_S)  # a baseline before the migration
    period_ns = int(period_ms * 1e6)
    before_ns = time.time_ns()
    baseline = guest.heartbeats.window(before_ns - int(BASELINE_S * 1e9), before_ns, period_ns)
    # A migration that iterates for a minute says where it stands (silent when it ends within 10 s).
    counted = params.parallel_connections or params.tunnelled  # both settings show in the destination's connections
    counter = ConnectionCounter(dst, guest.name) if counted else nullcontext()
    with StatusLine(f"{scenario} {src.name} -> {dst.name}", quiet_for_s=10) as progress, counter:
        result = migrate(guest.name, src, dst, params, progress)
    if counted:
        observed.migration_connections_max, observed.qemu_polls = counter.seen, counter.qemu_polls
    if result.ok:
        guest.host = dst
    # The window closes once both probes hear the guest again after completion (or the wait runs out,
    # and then the gap runs to the window's end: the figure is never cut short).
    _wait_for(lambda: guest.heartbeats.count_since(result.finished_ns) >= SETTLE_PACKETS
              and prober.replies_since(result.finished_ns) >= SETTLE_PACKETS, SETTLE_MAX_S)
    end_ns = time.time_ns()
    hb = guest.heartbeats.window(result.started_ns, end_ns, period_ns)
    echo = prober.window(result.started_ns, end_ns)
    series = {"started_ns": result.started_ns, "finished_ns": result.finished_ns, "window_end_ns": end_ns,
              "heartbeat_ns": guest.heartbeats.arrivals(result.started_ns - int(BASELINE_S * 1e9), end_ns),
              "echo_ns": prober.arrivals(result.started_ns - int(BASELINE_S * 1e9), end_ns)}
    # The pace after the move needs a second of it (the window above closes as soon as both probes hear the guest).
    time.sleep(max(0.0, (result.finished_ns + AFTER_NS - time.time_ns()) / 1e9))
    pace_end_ns = max(end_ns, result.finished_ns + AFTER_NS)
    slowed = degradation(guest.heartbeats, prober, result.started_ns, result.finished_ns, pace_end_ns,
                         gap=(hb.gap_start_ns, hb.gap_start_ns + int(hb.max_gap_ms * 1e6)))
    series.update(pace_series(guest.heartbeats, result.started_ns, pace_end_ns))
    prober.close()  # its replies stand still from here
    guest.probes.remove(prober)
    beyond = echo_beyond_guest(prober, hb, echo)
    hypervisor = result.stats.get("downtime") if result.ok else None
    downtime = {"hypervisor": None if hypervisor is None else float(hypervisor),
                "guest": round(hb.max_gap_ms, 3), "network": round(echo.max_gap_ms, 3)}
    m = Measurement(scenario, result, downtime, _probe_doc(hb), {**_probe_doc(echo), "period_ms": echo_interval_us / 1000,
                                                   "beyond_guest": beyond},
                    baseline_gap_ms=round(baseline.max_gap_ms, 3) if baseline.received else None, series=series,
                    observed=observed, degradation=slowed)
    if result.ok:
        m.findings = check_invariants(m, period_ms, tolerance) + settings_findings(params, result, observed,
                                                                                   dirty_mibs_asked) \
            + statistics_findings(result, observed, dirty_mibs_asked, dirty_region_mib)
    m.harness_s = time.monotonic() - began - result.wall_s
    return m


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


def check_invariants(m: Measurement, period_ms: float, tolerance: Tolerance) -> list[Finding]:
    """What must hold between the probes whatever the thresholds are, both ways.

    tolerance.hypervisor_overestimate_ms: libvirt's stop/resume timestamps may put its figure above the
    guest's by this much; tolerance.hypervisor_underreport_ms: the guest may see this much more than
    libvirt reports (device state, the network re-learning the guest's port) before libvirt under-reports.
    """
    findings = []
    d = m.downtime_ms
    if d["hypervisor"] is None:
        findings.append(Finding(Kind.DOWNTIME_ABSENT, "libvirt's completed-job stats have no `downtime`"
                                + (f" ({m.result.stats_note})" if m.result.stats_note else "")))
    else:
        if d["guest"] < d["hypervisor"] - period_ms - tolerance.hypervisor_overestimate_ms:
            findings.append(Finding(Kind.INVARIANT, f"guest-perceived downtime {d['guest']:.1f} ms is below "
                                    f"hypervisor-reported {d['hypervisor']:.0f} ms minus one heartbeat period "
                                    f"({period_ms:g} ms) and the stated tolerance "
                                    f"({tolerance.hypervisor_overestimate_ms:g} ms)"))
        # Auto-converge's throttle stops the vCPU without pausing the guest: silent, and rightly not in libvirt's figure.
        throttled = throttle_sleep_ms(m.result.throttle_max_pct or 0)
        if d["guest"] > d["hypervisor"] + tolerance.hypervisor_underreport_ms + throttled:
            findings.append(Finding(Kind.UNDERREPORTED, f"libvirt under-reports: the guest was silent {d['guest']:.1f} ms, "
                                    f"libvirt reports {d['hypervisor']:.0f} ms downtime, beyond the stated bound of "
                                    f"{tolerance.hypervisor_underreport_ms:g} ms"
                                    + (f" and the {throttled:.0f} ms the CPU throttle stops the vCPU at "
                                       f"{m.result.throttle_max_pct}%" if throttled else ""), figure_ms=d["guest"]))
    if d["guest"] - d["network"] > tolerance.guest_over_network_ms:
        findings.append(Finding(Kind.INVARIANT, f"the guest's heartbeats stopped {d['guest']:.1f} ms while its echo "
                                f"replies stopped at most {d['network']:.1f} ms (beyond the stated "
                                f"{tolerance.guest_over_network_ms:g} ms): the stall was in the guest agent, "
                                "not the migration"))
    if m.total_s is None:
        findings.append(Finding(Kind.TOTAL_TIME_ABSENT, "libvirt's completed-job stats have no `time_elapsed`"))
    if m.heartbeats["lost"]:
        findings.append(Finding(Kind.HEARTBEAT_LOST, f"{m.heartbeats['lost']} heartbeat sequence numbers never arrived"))
    if m.heartbeats["reordered"]:
        findings.append(Finding(Kind.INVARIANT, f"{m.heartbeats['reordered']} heartbeats arrived out of order"))
    if m.heartbeats["duplicates"]:
        findings.append(Finding(Kind.SPLIT_BRAIN, f"{m.heartbeats['duplicates']} heartbeats arrived twice: two copies "
                                                  "of the guest sent the same sequence numbers"))
    echo_period = m.echo.get("period_ms", 1.0)
    outside = m.echo["lost"] - m.echo.get("stalled_ms", 0.0) / echo_period
    if outside > ECHO_LOSS_SLACK:
        findings.append(Finding(Kind.INVARIANT, f"{m.echo['lost']} echo replies lost, {outside:.0f} more than the "
                                                f"{m.echo.get('stalled_ms', 0.0):.0f} ms of stalls explain: the network "
                                                "dropped packets while the guest was running"))
    if m.heartbeats["boot_ids"] > 1:
        findings.append(Finding(Kind.TWO_BOOT_IDS, f"heartbeats from {m.heartbeats['boot_ids']} boots in one "
                                                   "migration window: the guest rebooted, or two copies ran"))
    return findings


def verdict(scenario: str, measurements: list[Measurement], limits: JudgedLimits) -> tuple[list[Finding], dict[str, Summary]]:
    """Threshold findings (one line each, naming scenario, probe, statistic, figure, limit) and the summaries.

    Every move is held to the limit (the summary's maximum), and each move over it is named: a p95 is
    reported beside the maximum, never judged instead of it. Each measurement's own findings (invariants,
    settings) are the caller's to add, marked with their move (verdicts.at_move).
    """
    findings: list[Finding] = []
    summaries: dict[str, Summary] = {}
    for probe in PROBES:
        values = [m.downtime_ms[probe] for m in measurements if m.downtime_ms[probe] is not None]
        if not values:
            continue  # absent in every measurement: each of them carries its own finding
        summary = summaries[probe] = Summary.of(values)
        limit = limits.downtime_ms[probe]
        if summary.judged > limit:
            findings.append(Finding(Kind.THRESHOLD, f"{scenario}: {probe} downtime {summary.basis} "
                                    f"{summary.judged:.1f} ms exceeds the limit of {limit:g} ms{_basis(limits, probe)} ({summary}); "
                                    f"over it: {_moves_over(values, limit, '{:.1f} ms')}{_echo_hops(measurements, probe, limit)}"))
    totals = [m.total_s for m in measurements if m.total_s is not None]
    if totals:
        total = summaries["total_s"] = Summary.of(totals)
        if total.judged > limits.total_s:
            findings.append(Finding(Kind.THRESHOLD, f"{scenario}: total migration time {total.basis} "
                                    f"{total.judged:.2f} s exceeds the limit of {limits.total_s:g} s{_basis(limits, 'total_s')}; "
                                    f"over it: {_moves_over(totals, limits.total_s, '{:.2f} s')}"))
    return findings, summaries


def _basis(limits: JudgedLimits, figure: str) -> str:
    """Where the limit came from: "(model 120 ms, factor 3)", or an override's reason."""
    return f" ({limits.basis[figure]})" if figure in limits.basis else ""


def _echo_hops(measurements: list[Measurement], probe: str, limit: float) -> str:
    """For the network probe: where each move's echo time beyond the guest's stop went (echo_hops)."""
    if probe != "network":
        return ""
    said = [f"move {i}: {m.echo['beyond_guest']['text']}" for i, m in enumerate(measurements, 1)
            if (m.downtime_ms["network"] or 0) > limit and (m.echo.get("beyond_guest") or {}).get("hop") != "none"
            and m.echo.get("beyond_guest")]
    return f"; where the echo's time went: {' | '.join(said)}" if said else ""


def _moves_over(values: list[float], limit: float, fmt: str) -> str:
    over = [f"move {i} of {len(values)} ({fmt.format(v)})" for i, v in enumerate(values, 1) if v > limit]
    return ", ".join(over)


def thresholds_record(thresholds: Thresholds) -> dict:
    return {"source": thresholds.source, "tolerance": thresholds.tolerance.model_dump()}

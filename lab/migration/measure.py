"""A measured live migration: the three downtime probes, the invariants, the verdict, the record.

1. hypervisor: libvirt's completed-job `downtime`, read on the destination;
2. guest: the largest gap between the guest agent's heartbeats at the runner;
3. network: the largest gap between replies to the runner's UDP echo probes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from lab.guest.domain import Guest
from lab.runtime.hosts import Host
from lab.migration.live import MigrationParams, MigrationResult, migrate
from lab.results.stats import Summary
from lab.config.thresholds import PROBES, Limits, Thresholds

SETTLE_MAX_S = 3.0  # longest wait, after completion, for both probes to hear the guest again
SETTLE_PACKETS = 20  # this many heartbeats and echo replies after completion close the window


@dataclass
class Measurement:
    scenario: str
    result: MigrationResult
    downtime_ms: dict[str, float]
    heartbeats: dict
    echo: dict
    invariant_failures: list[str] = field(default_factory=list)
    harness_s: float = 0.0  # wall time the harness spent beyond the migration API call

    @property
    def total_s(self) -> float:
        return self.result.stats.get("time_elapsed", self.result.wall_s * 1000) / 1000.0

    def record(self, versions: dict, limits: Limits) -> dict:
        return {
            "kind": "live-migration", "scenario": self.scenario, "mode": self.result.params.mode,
            "params": asdict(self.result.params), "src": self.result.src, "dst": self.result.dst,
            "ok": self.result.ok, "error": self.result.error, "aborted": self.result.aborted,
            "switched_to_postcopy": self.result.switched_to_postcopy,
            "downtime_ms": self.downtime_ms, "total_s": self.total_s, "wall_s": self.result.wall_s,
            "libvirt_stats": self.result.stats, "heartbeats": self.heartbeats, "echo": self.echo,
            "invariant_failures": self.invariant_failures, "harness_s": self.harness_s,
            "thresholds": {"downtime_ms": limits.downtime_ms, "total_s": limits.total_s},
            "versions": versions,
        }


def measure_migration(scenario: str, guest: Guest, src: Host, dst: Host, params: MigrationParams,
                      period_ms: float, echo_interval_us: int = 1000, overestimate_ms: float = 0.0) -> Measurement:
    """Migrate `guest` from src to dst with all three probes running; the guest follows on success."""
    began = time.monotonic()
    prober = guest.echo_prober(echo_interval_us)
    _wait_for(lambda: prober.replies() >= SETTLE_PACKETS, SETTLE_MAX_S)  # a baseline before the migration
    result = migrate(guest.name, src, dst, params)
    if result.ok:
        guest.host = dst
    # The window closes once both probes hear the guest again after completion (or the wait runs out,
    # and then the gap runs to the window's end: the figure is never cut short).
    _wait_for(lambda: guest.heartbeats.count_since(result.finished_ns) >= SETTLE_PACKETS
              and prober.replies_since(result.finished_ns) >= SETTLE_PACKETS, SETTLE_MAX_S)
    end_ns = time.time_ns()
    hb = guest.heartbeats.window(result.started_ns, end_ns)
    echo = prober.window(result.started_ns, end_ns)
    prober.close()
    guest.probes.remove(prober)
    downtime = {"hypervisor": float(result.stats.get("downtime", 0)) if result.ok else 0.0,
                "guest": round(hb.max_gap_ms, 3), "network": round(echo.max_gap_ms, 3)}
    m = Measurement(scenario, result, downtime, asdict(hb), asdict(echo))
    if result.ok:
        m.invariant_failures = check_invariants(m, period_ms, overestimate_ms)
    m.harness_s = time.monotonic() - began - result.wall_s
    return m


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


def check_invariants(m: Measurement, period_ms: float, overestimate_ms: float = 0.0) -> list[str]:
    """What must hold between the probes whatever the thresholds are.

    overestimate_ms: the stated tolerance for libvirt's own stop/resume timestamps (thresholds.yaml).
    """
    failures = []
    d = m.downtime_ms
    if d["guest"] < d["hypervisor"] - period_ms - overestimate_ms:
        failures.append(f"guest-perceived downtime {d['guest']:.1f} ms is below hypervisor-reported "
                        f"{d['hypervisor']:.0f} ms minus one heartbeat period ({period_ms:g} ms) and the stated "
                        f"tolerance ({overestimate_ms:g} ms)")
    if m.heartbeats["lost"]:
        failures.append(f"{m.heartbeats['lost']} heartbeat sequence numbers never arrived")
    if m.heartbeats["reordered"]:
        failures.append(f"{m.heartbeats['reordered']} heartbeats arrived out of order")
    return failures


def verdict(scenario: str, measurements: list[Measurement], limits: Limits) -> tuple[list[str], dict[str, Summary]]:
    """Threshold failures (one line each, naming scenario, probe, figure, limit) and the summaries."""
    failures: list[str] = []
    summaries: dict[str, Summary] = {}
    for probe in PROBES:
        summary = Summary.of([m.downtime_ms[probe] for m in measurements])
        summaries[probe] = summary
        limit = limits.downtime_ms[probe]
        if summary.p95 > limit:
            failures.append(f"{scenario}: {probe} downtime p95 {summary.p95:.1f} ms exceeds the limit of {limit:g} ms "
                            f"({summary})")
    total = Summary.of([m.total_s for m in measurements])
    summaries["total_s"] = total
    if total.p95 > limits.total_s:
        failures.append(f"{scenario}: total migration time p95 {total.p95:.2f} s exceeds the limit of {limits.total_s:g} s")
    for m in measurements:
        failures += [f"{scenario}: {text}" for text in m.invariant_failures]
    return failures, summaries


def thresholds_record(thresholds: Thresholds) -> dict:
    return {"source": thresholds.source, "tolerance": thresholds.tolerance.model_dump()}

"""What a migration should cost on this lab, from the calibration and the scenario's settings.

QEMU's precopy copies all RAM once, then the pages dirtied meanwhile, round after round, and stops the guest
when what is left fits in max-downtime at the measured bandwidth (migration_iteration_run / the downtime
check in migration_completion). So, with B the bandwidth (the link's measured page throughput, or the cap),
R the guest's dirty rate, W the memory it dirties, D max-downtime (300 ms unless set):
- downtime: the idle switchover (pause, device state, resume: calibrated) plus the last dirty set, at most
  B*D and at most W, over B; an idle guest's small hot set is already in the calibrated switchover;
- total: the set-up and final sync (calibrated) plus the first pass (an idle guest's RAM plus W) over B, plus
  the re-sends, min(W, R*first pass) / (B - R) summed as a geometric series; R >= B does not converge
  without help: auto-converge throttles the vCPU step by step (each step one round of W over B) until R
  falls below B/2; postcopy switches after N rounds (or a time) and then pulls the rest at the link's speed
  (max-postcopy-bandwidth is unlimited), copy-storage adds the disk over B.
These are bounds of the kind QEMU itself plans by, not predictions to the millisecond: a verdict allows a
factor over them (thresholds.yaml `model`), and states measured, model, allowed and the factor.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

QEMU_MAX_DOWNTIME_MS = 300  # QEMU's default downtime-limit (migration/options.c)
THROTTLE_TIMESLICE_MS = 10  # QEMU's CPU_THROTTLE_TIMESLICE_NS: a throttled vCPU runs this long between sleeps
MAX_THROTTLE_PCT = 99  # QEMU's default max-cpu-throttle
PROBES = ("hypervisor", "guest", "network")


@dataclass(frozen=True)
class Calibration:
    """What the limits depend on, measured on the lab (measure.py): one host pair, one stack, one guest size."""
    accelerator: str
    throughput_mibs: float  # RAM payload per second an idle move achieved (normal pages over the copy time)
    tunnelled_throughput_mibs: float  # the same, tunnelled through libvirtd
    switchover_ms: dict[str, float]  # the worst idle move's downtime per probe
    setup_s: float  # an idle move's total time less its RAM over the throughput: set-up, final sync, completion
    idle_ram_mib: float  # RAM an idle move sent (normal pages; zero pages are a few bytes each)
    dirty_max_mibs: float  # the guest's writer at full speed
    moves: int  # idle moves the figures are medians of
    guest_mib: int
    key: dict = field(default_factory=dict)  # what it was measured on (measure.fingerprint)
    measured_at: str = ""
    # One cold move of the idle guest on shared storage: its last echo reply before the shutdown to the first
    # after the boot on the other host. 0: the file is from before cold moves were calibrated (not a limit).
    cold_interruption_s: float = 0.0

    def lines(self) -> list[str]:
        sw = ", ".join(f"{p} {self.switchover_ms[p]:.0f} ms" for p in PROBES)
        return [f"accelerator {self.accelerator}; migration throughput {self.throughput_mibs:.1f} MiB/s, tunnelled "
                f"{self.tunnelled_throughput_mibs:.1f} MiB/s (idle moves: {self.idle_ram_mib:.0f} MiB of RAM, set-up "
                f"and completion {self.setup_s:.2f} s)",
                f"idle switchover (the worst of {self.moves} moves): {sw}",
                f"guest's dirty rate at full speed {self.dirty_max_mibs:.0f} MiB/s; guest {self.guest_mib} MiB",
                "cold move (shut down, define on the other host, boot): "
                + (f"{self.cold_interruption_s:.1f} s without service" if self.cold_interruption_s
                   else "not calibrated (run `python -m lab calibrate --again`)")]

    def as_record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Setting:
    """The scenario's side of the model: its migration settings and what the guest does."""
    bandwidth_mibs: float = 0  # 0: the link's
    max_downtime_ms: float = 0  # 0: QEMU's default
    dirty_mibs: float = 0
    dirty_region_mib: float = 0
    mode: str = "precopy"
    auto_converge: bool = False
    auto_converge_initial_pct: int = 0
    auto_converge_increment_pct: int = 0
    postcopy_after_iterations: int = 2
    postcopy_after_s: float = 5.0
    copy_disk_mib: float = 0  # copy-storage: the disk copied
    tunnelled: bool = False  # through libvirtd: the tunnelled throughput

    @classmethod
    def of(cls, params, dirty_mibs: float, dirty_region_mib: float, disk_mib: float = 0) -> "Setting":
        return cls(params.bandwidth_mibs, params.max_downtime_ms, dirty_mibs, dirty_region_mib if dirty_mibs else 0,
                   params.mode, params.auto_converge, params.auto_converge_initial_pct,
                   params.auto_converge_increment_pct, params.postcopy_after_iterations, params.postcopy_after_s,
                   disk_mib if params.copy_storage else 0, params.tunnelled)


@dataclass(frozen=True)
class Expectation:
    downtime_ms: dict[str, float]
    total_s: float
    converges: bool
    how: str  # the model's steps, for the report

    def as_record(self) -> dict:
        return asdict(self)


def throttle_sleep_ms(pct: float) -> float:
    """How long auto-converge's throttle stops a vCPU at a time (cpu_throttle_thread: pct / (1 - pct) timeslices):
    the guest is silent that long without being paused, 990 ms at 99%."""
    pct = min(max(pct, 0.0), MAX_THROTTLE_PCT)
    return THROTTLE_TIMESLICE_MS * pct / (100 - pct)


def expect(cal: Calibration, s: Setting) -> Expectation:
    link = cal.tunnelled_throughput_mibs if s.tunnelled else cal.throughput_mibs
    bw = min(link, s.bandwidth_mibs) if s.bandwidth_mibs else link
    limit_s = (s.max_downtime_ms or QEMU_MAX_DOWNTIME_MS) / 1000
    rate = min(s.dirty_mibs, cal.dirty_max_mibs)
    region = s.dirty_region_mib
    first = (cal.idle_ram_mib + region) / bw
    how = [f"B={bw:.1f} MiB/s{' (tunnelled)' if s.tunnelled else ''}, D={limit_s * 1000:.0f} ms, R={rate:g} MiB/s over W={region:g} MiB",
           f"first pass {cal.idle_ram_mib + region:.0f} MiB / B = {first:.1f} s"]
    last_set_s = min(limit_s, region / bw) if rate else 0.0  # what the final stop copies, in seconds of B
    converges, throttled_ms = True, 0.0
    if s.mode == "postcopy" and rate:
        rounds_s = min(s.postcopy_after_s, max(1, s.postcopy_after_iterations) * max(first, 1.0))
        rest = max(0.0, cal.idle_ram_mib + region - rounds_s * bw) / link
        copy_s = rounds_s + rest
        how.append(f"postcopy after {rounds_s:.1f} s, then {rest:.1f} s for the rest at the link's {link:.0f} MiB/s")
    elif rate >= bw and not s.auto_converge:
        converges, copy_s = False, math.inf
        how.append("R >= B: precopy cannot converge")
    elif rate >= bw:  # auto-converge: throttle until the writer falls below half the bandwidth
        wanted = 1 - bw / (2 * rate)
        start, step = (s.auto_converge_initial_pct or 20) / 100, (s.auto_converge_increment_pct or 10) / 100
        steps = max(0, math.ceil((wanted - start) / step)) + 1
        copy_s = first + (steps + 1) * region / bw
        reached = min(MAX_THROTTLE_PCT, 100 * (start + (steps - 1) * step))
        throttled_ms = throttle_sleep_ms(reached)
        how.append(f"auto-converge: throttle {wanted:.0%} wanted, {steps} step(s) of W / B = {region / bw:.1f} s, "
                   f"up to {reached:.0f}%: the vCPU stops {throttled_ms:.0f} ms at a time (guest, network)")
    else:
        resend = min(region, rate * first) / (bw - rate) if rate else 0.0
        copy_s = first + resend
        if rate:
            how.append(f"re-sends min(W, R x first pass) / (B - R) = {resend:.1f} s")
    disk_s = s.copy_disk_mib / bw
    if disk_s:
        how.append(f"disk {s.copy_disk_mib:g} MiB / B = {disk_s:.1f} s")
    total = cal.setup_s + copy_s + disk_s
    # The idle switchover was calibrated at the link's throughput; tunnelled, its final copy goes through libvirtd
    # at the tunnelled one: at most the whole switchover, scaled by the ratio of the two.
    slower = max(1.0, cal.throughput_mibs / cal.tunnelled_throughput_mibs) if s.tunnelled else 1.0
    if slower > 1:
        how.append(f"idle switchover x {slower:.2f} (the link's throughput over the tunnel's)")
    downtime = {p: cal.switchover_ms[p] * slower + 1000 * last_set_s + (throttled_ms if p != "hypervisor" else 0)
                for p in PROBES}
    if last_set_s:
        how.append(f"final set min(D, W / B) = {1000 * last_set_s:.0f} ms on top of the idle switchover")
    return Expectation({p: round(v, 1) for p, v in downtime.items()},
                       round(total, 2) if converges else math.inf, converges, "; ".join(how))


def underreport_allowance_ms(cal: Calibration, factor: float) -> float:
    """How much longer than libvirt's downtime the guest may be silent: the calibrated idle moves' own excess
    (device state, resume, the network re-learning the guest's port) times the downtime factor."""
    return factor * max(0.0, cal.switchover_ms["guest"] - cal.switchover_ms["hypervisor"])


def expect_cold(cal: Calibration, copy_disk_mib: float = 0) -> tuple[float, str] | None:
    """A cold move's interruption: the calibrated one (shutdown, define, boot), plus the disk copied over the
    link at the migration's throughput when the storage is not shared. None: the calibration has no cold move."""
    if not cal.cold_interruption_s:
        return None
    copy_s = copy_disk_mib / cal.throughput_mibs
    how = f"calibrated cold move {cal.cold_interruption_s:.1f} s" + \
        (f" + disk {copy_disk_mib:g} MiB / {cal.throughput_mibs:.1f} MiB/s = {copy_s:.1f} s" if copy_s else "")
    return round(cal.cold_interruption_s + copy_s, 2), how

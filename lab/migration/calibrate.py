"""Calibration: what a migration costs on this lab, measured once per host pair, stacks, guest size and machine.

An idle guest of the suites' size is moved CALIBRATION_MOVES times between the pair (ending where it began),
each move measured as the live suite measures (three downtime probes, libvirt's job stats), then
TUNNELLED_MOVES times tunnelled through libvirtd (whose copy costs CPU of its own); then its dirty writer is
run flat out, and last it is moved cold once (shut down, defined on the other host, booted). The
throughputs are medians; the switchover is the worst move's per probe, since the tail a loaded host gives a
pause is part of what the lab is (seen: 14-39 ms for precopy-idle and 171 ms for ping-pong in the same run).
It is cached under CACHE_ROOT/calibration, keyed by what it depends on (fingerprint): another stack, host pair, accelerator,
guest size or CPU count is another calibration; `python -m lab calibrate --again` measures anew.
$LAB_CALIBRATION names a calibration file to use instead, whatever the pair: the mutant runner and bisect set
it to their reference run's (results.gate_run.pin_calibration).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

from lab.calibration.model import PROBES, Calibration
from lab.config.thresholds import Tolerance
from lab.errors import LabError
from lab.guest.domain import create_guest, remove_guest
from lab.migration.honoured import dirty_rate_before
from lab.migration.cold import cold_migrate, interruption_s, wait_echo
from lab.migration.live import MigrationParams
from lab.migration.measure import measure_migration
from lab.runtime.layout import CACHE_ROOT
from lab.util.files import atomic_write_json

CALIBRATION_MOVES = 4  # even: the guest ends on the host it started on
TUNNELLED_MOVES = 2
FULL_SPEED_MIBS = 4096  # asked of the dirty writer: more than any guest here achieves
DIRTY_REGION_MIB = 64
CACHE = CACHE_ROOT / "calibration"


def fingerprint(lab, src, dst, machine: str | None = None) -> dict:
    guest = lab.config.guest
    return {"machine": machine, "lab": lab.config.name, "pair": [[h.name, h.address] for h in (src, dst)],
            "stacks": [lab.stack_of(h) for h in (src, dst)], "accelerator": lab.accelerator,
            "guest": {"memory_mib": guest.memory_mib, "vcpus": guest.vcpus, "heartbeat_us": guest.heartbeat_us},
            "runner_cpus": os.cpu_count()}


def cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / f"{key['lab']}-{digest}.json"


def cached(key: dict) -> Calibration | None:
    """The cached calibration; one from before cold moves were calibrated is measured anew."""
    try:
        found = Calibration(**json.loads(cache_file(key).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return found if found.cold_interruption_s else None


def cached_for_lab(lab_name: str) -> list[Calibration]:
    """Every calibration cached for this lab (`lab status` prints them)."""
    found = []
    for path in sorted(CACHE.glob(f"{lab_name}-*.json")):
        try:
            found.append(Calibration(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return found


def load_calibration(path: Path) -> Calibration:
    try:
        return Calibration(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise LabError(f"LAB_CALIBRATION={path}: not a calibration file ({exc}); give one that `python -m lab "
                       "calibrate` wrote (under /var/cache/kvm-acceptance-lab/calibration), or unset it") from None


def calibrated(lab, src, dst, tolerance: Tolerance, say: Callable[[str], None], again: bool = False,
               machine: str | None = None) -> Calibration:
    """The pair's calibration: $LAB_CALIBRATION's, cached, or measured now (a minute or two under TCG) and
    cached. `machine`: the guest's machine type where the pair needs one (hosts on different QEMU versions)."""
    if os.environ.get("LAB_CALIBRATION"):
        return load_calibration(Path(os.environ["LAB_CALIBRATION"]))
    key = fingerprint(lab, src, dst, machine)
    found = None if again else cached(key)
    if found:
        return found
    say(f"calibrating {src.name} -> {dst.name} (idle moves, the guest's dirty rate; cached in {CACHE})")
    cal = measure(lab, src, dst, tolerance, key, machine)
    CACHE.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache_file(key), cal.as_record())
    for line in cal.lines():
        say(f"  {line}")
    return cal


def measure(lab, src, dst, tolerance: Tolerance, key: dict, machine: str | None = None) -> Calibration:
    guest = create_guest(lab, src, name=f"calib-{os.getpid()}", **({"machine": machine} if machine else {}))
    try:
        period_ms = lab.config.guest.heartbeat_us / 1000
        moves, tunnelled = [], []
        a, b = src, dst
        for i in range(CALIBRATION_MOVES + TUNNELLED_MOVES):
            tunnel = i >= CALIBRATION_MOVES
            params = MigrationParams(migrate_uri=None if tunnel else f"tcp://{b.address}", tunnelled=tunnel,
                                     unsafe=lab.needs_unsafe("shared"))
            m = measure_migration("calibration", guest, a, b, params, period_ms, tolerance)
            stats = m.result.stats
            if not m.result.ok or None in m.downtime_ms.values() or not stats.get("memory_normal_bytes"):
                raise LabError(f"calibration: idle move {i + 1} {a.name} -> {b.name} gave no figures "
                               f"({m.result.error or 'libvirt reported no downtime or RAM sent'}); "
                               "the limits cannot follow from this lab: run `python -m lab doctor`")
            (tunnelled if tunnel else moves).append(m)
            a, b = b, a
        dirty_max = _dirty_at_full_speed(guest)
        cold_s = _cold_interruption_s(guest, a, b)
    finally:
        remove_guest(lab, guest)
    ram_mib = [_ram_mib(m) for m in moves]
    throughput = statistics.median(_ram_mib(m) / _copy_s(m) for m in moves)
    ram = statistics.median(ram_mib)
    setup = statistics.median(m.total_s - r / throughput for m, r in zip(moves, ram_mib))
    return Calibration(
        accelerator=lab.accelerator, throughput_mibs=round(throughput, 2),
        tunnelled_throughput_mibs=round(statistics.median(_ram_mib(m) / _copy_s(m) for m in tunnelled), 2),
        switchover_ms={p: round(max(m.downtime_ms[p] for m in moves), 1) for p in PROBES},
        setup_s=round(max(setup, 0.0), 3), idle_ram_mib=round(ram, 1), dirty_max_mibs=round(dirty_max, 1),
        moves=len(moves), guest_mib=lab.config.guest.memory_mib, key=key,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), cold_interruption_s=round(cold_s, 2))


def _cold_interruption_s(guest, src, dst) -> float:
    """One cold move src -> dst (shared storage), timed as the cold suite times it: the echo service's longest
    silence from just before the shutdown to the replies after the boot."""
    prober = guest.echo_prober()
    wait_echo(prober, 0)
    result = cold_migrate(guest, src, dst, copy=False)
    if not result.ok:
        raise LabError(f"calibration: the cold move {src.name} -> {dst.name} failed ({result.error}); the cold "
                       "limit cannot follow from this lab: run `python -m lab doctor`")
    gap_s = interruption_s(prober, result.started_ns) if wait_echo(prober, result.finished_ns) else 0.0
    if not gap_s:
        raise LabError(f"calibration: no echo reply from the guest after its cold move to {dst.name}: the cold "
                       "limit cannot follow from this lab; see the guest's console log")
    return gap_s


def _ram_mib(m) -> float:
    return m.result.stats["memory_normal_bytes"] / 2**20


def _copy_s(m) -> float:
    """The move's time copying: its total less set-up and the pause."""
    stats = m.result.stats
    return max(1e-3, (stats["time_elapsed"] - stats.get("setup_time", 0) - stats.get("downtime", 0)) / 1000)


def _dirty_at_full_speed(guest) -> float:
    guest.agent("dirty", FULL_SPEED_MIBS, DIRTY_REGION_MIB)
    try:
        time.sleep(1.0)  # the agent's rate is over whole seconds: the first is the writer starting
        rate = dirty_rate_before(guest, FULL_SPEED_MIBS)
    finally:
        guest.agent("dirty", 0, 0)
    if rate <= 0:
        raise LabError("calibration: the guest's dirty writer achieved 0 MiB/s at full speed; the agent is not "
                       "working: see the guest's console log")
    return rate

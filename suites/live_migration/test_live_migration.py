"""Live migration: downtime measured three ways against thresholds, guest intact after every move."""
from __future__ import annotations

import threading
import time

import libvirt
import pytest

from lab.migration.external_oracle import verify_from_outside
from lab.migration.integrity import check_intact, inspect, take_fingerprint
from lab.migration.live import ABORT_GRACE_S, MigrationParams, get_max_downtime_ms, migrate
from lab.results.evidence import collect
from lab.results.stats import Summary
from lab.results.verdicts import Finding, Kind, Stack, at_move, judge
from suites.live_migration.scenarios import LINK_MIBS, MEASURED, Scenario

pytestmark = pytest.mark.lab


def _marks(scenario: Scenario):
    return [pytest.mark.smoke] if scenario.smoke else []


@pytest.mark.timing
@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.id, marks=_marks(s)) for s in MEASURED])
def test_measured_migration(scenario, guest_factory, measurement_lock, run_measured, settle):
    """Pass, fail, or excused by a registered known defect that explains every finding (decided after the run)."""
    guest = guest_factory(storage=scenario.storage)
    _measurements, outcome = run_measured(scenario, guest)
    settle(outcome)


@pytest.mark.timing
def test_max_downtime_is_honoured_two_caps_far_apart(lab, guest_factory, measurement_lock, thresholds, repeat,
                                                    record, host_versions, known_defects, settle):
    """Two caps on the same dirtying guest: QEMU must follow them. A low cap takes more iterations and stops
    the guest for less time than a high one; a setting QEMU ignored shows as no difference."""
    caps = {"low": 50, "high": 2000}
    guest = guest_factory()
    before = take_fingerprint(guest)
    guest.agent("dirty", 8, 64)  # well below the 32 MiB/s link: converges under either cap
    seen: dict[str, list[tuple[float, int]]] = {name: [] for name in caps}
    src, dst = lab.hosts

    def stacks(a, b) -> tuple[Stack, Stack]:  # each move is judged by its own source and destination
        return tuple(Stack.of(host_versions[h.name], lab.accelerator) for h in (a, b))

    # First the oracle's move, as the measured dirty scenarios do (untimed: the destination stays paused while
    # the oracle's pages are read from outside). A QEMU that loses this guest's stores crashes it; without this
    # reading the reboot would be all the evidence there is, and no known defect explains a bare reboot.
    oracle = Scenario("max-downtime-two-caps", MigrationParams(bandwidth_mibs=LINK_MIBS * 2))
    findings = at_move(verify_from_outside(lab, guest, before, src, dst, oracle.id, oracle.with_lab(lab, dst.address),
                                           record), 0, stacks(src, dst))
    if findings:
        settle(judge(findings, Stack.of(host_versions[src.name], lab.accelerator), known_defects))
    src, dst = dst, src
    move = 0
    for i in range(repeat):
        for name, cap in caps.items():
            move += 1
            params = Scenario("max-downtime", MigrationParams(max_downtime_ms=cap, bandwidth_mibs=LINK_MIBS * 2)) \
                .with_lab(lab, dst.address)
            src.connect().lookupByName(guest.name).migrateSetMaxDowntime(cap, 0)
            assert get_max_downtime_ms(src, guest.name) == cap, "the cap did not read back as set"
            result = migrate(guest.name, src, dst, params)
            assert result.ok, result.error
            guest.host = dst
            after = inspect(guest, before, lab.hosts, dst)
            downtime, iterations = result.stats.get("downtime"), result.stats.get("memory_iteration")
            record({"kind": "live-migration", "scenario": f"max-downtime-{name}-{cap}ms", "repetition": i + 1,
                    "src": src.name, "dst": dst.name, "configured_max_downtime_ms": cap,
                    "downtime_ms": {"hypervisor": downtime}, "iterations": iterations, "libvirt_stats": result.stats,
                    "oracle": after.oracle, "findings": [{"kind": f.kind.value, "text": f.text} for f in after.findings]})
            findings += at_move(after.findings, move, stacks(src, dst))
            if downtime is None or iterations is None:
                findings += at_move([Finding(Kind.DOWNTIME_ABSENT, f"cap {cap} ms: libvirt reported downtime "
                                             f"{downtime}, iterations {iterations} ({result.stats_note})")],
                                    move, stacks(src, dst))
            else:
                seen[name].append((float(downtime), int(iterations)))
            src, dst = dst, src
            if findings:
                settle(judge(findings, Stack.of(host_versions[src.name], lab.accelerator),
                             known_defects))
    low, high = (Summary.of([d for d, _ in seen[n]]) for n in ("low", "high"))
    low_it, high_it = (Summary.of([it for _, it in seen[n]]) for n in ("low", "high"))
    record({"kind": "summary", "scenario": "max-downtime-two-caps", "caps_ms": caps,
            "downtime_ms": {"low": vars(low), "high": vars(high)}, "iterations": {"low": vars(low_it), "high": vars(high_it)}},
           {"downtime_low_cap_ms_max": low.max, "downtime_high_cap_ms_p50": high.p50,
            "iterations_low_cap_p50": low_it.p50, "iterations_high_cap_p50": high_it.p50})
    limit = caps["low"] + thresholds.tolerance.max_downtime_ms
    assert low.max <= limit, (f"cap {caps['low']} ms: hypervisor downtime max {low.max:.0f} ms exceeds the cap + "
                              f"tolerance {thresholds.tolerance.max_downtime_ms:g} ms ({low})")
    # Apart, not just in the medians: caps 40 times apart give distributions that do not overlap (an honest 7.2
    # under TCG: 16-19 ms and 5-6 iterations under 50 ms, 51-58 ms and 3 under 2000 ms), while a QEMU that ignores
    # the cap draws both from one distribution, whose medians fall "the right way" half the time (issue 24: one
    # passed 3 of 3 so). Every move of the low cap must beat every move of the high one.
    assert low_it.min > high_it.max, (f"QEMU's iterations under a {caps['low']} ms cap ({low_it}) are not all above "
                                      f"those under {caps['high']} ms ({high_it}): the cap was not honoured")
    assert low.max < high.min, (f"downtime under a {caps['low']} ms cap ({low}) is not all below that under "
                                f"{caps['high']} ms ({high}): the cap was not honoured")


@pytest.mark.smoke
@pytest.mark.timing
def test_two_bandwidth_caps_are_each_honoured_by_the_measured_throughput(lab, guest_factory, measurement_lock,
                                                                         thresholds, record):
    """Two caps on the same guest: the throughput measured from libvirt's bytes and time must track each within
    the tolerance, both ways (a cap QEMU ignored runs at the link's speed, hundreds of MiB/s here). The figure
    includes the migration's fixed costs (setup, the zero-page scan, the switchover: 1.4-1.9 s under TCG), so it
    is a little below the cap; at 32 MiB/s they took a quarter (24.1 measured), hence two caps below that."""
    caps = (8, 16)  # MiB/s: measured 7.2 and 14.8-15.0 under TCG
    tolerance = thresholds.tolerance.bandwidth_pct / 100
    guest = guest_factory()
    guest.agent("fill", 99, 64, timeout=60)  # 64 MiB that are not zero pages, so they really cross the link
    src, dst = lab.hosts
    measured = {}
    for cap in caps:
        params = Scenario("bandwidth", MigrationParams(bandwidth_mibs=cap)).with_lab(lab, dst.address)
        result = migrate(guest.name, src, dst, params)
        assert result.ok, result.error
        guest.host = dst
        stats = result.stats
        moved = stats["memory_processed"] + stats.get("disk_processed", 0)
        seconds = (stats["time_elapsed"] - stats.get("setup_time", 0)) / 1000
        measured[cap] = moved / seconds / 2**20
        record({"kind": "bandwidth", "scenario": f"bandwidth-{cap}MiBs", "configured_mibs": cap,
                "measured_mibs": measured[cap], "bytes": moved, "seconds": seconds, "libvirt_stats": stats},
               {f"bandwidth_{cap}_measured_mibs": round(measured[cap], 2)})
        assert moved > 48 * 2**20, f"only {moved} bytes moved: the filled memory did not cross the link"
        src, dst = dst, src
    for cap, mibs in measured.items():
        assert cap * (1 - tolerance) <= mibs <= cap * (1 + tolerance), (
            f"bandwidth-{cap}MiBs: measured throughput {mibs:.1f} MiB/s is not within "
            f"{thresholds.tolerance.bandwidth_pct:g}% of the configured {cap} MiB/s (both caps: "
            + ", ".join(f"{c} -> {m:.1f}" for c, m in measured.items()) + ")")


@pytest.mark.smoke
def test_precopy_that_cannot_converge_times_out_and_the_guest_keeps_running_on_the_source(
        lab, guest, src_host, dst_host, record, test_report_dir):
    before = take_fingerprint(guest)
    guest.agent("dirty", 64, 64)  # four times the link's rate
    params = Scenario("timeout", MigrationParams(bandwidth_mibs=LINK_MIBS, timeout_s=8)).with_lab(lab, dst_host.address)
    result = migrate(guest.name, src_host, dst_host, params)
    record({"kind": "live-migration", "scenario": "precopy-dirty-64MiBs-timeout-abort", "ok": result.ok,
            "error": result.error, "aborted": result.aborted, "libvirt_stats": result.stats})
    assert not result.ok and result.aborted, f"expected the watchdog to abort, got: {result.error or 'success'}"
    assert "budget 8 s exceeded: aborted" in result.error
    assert not result.call_hung, f"the aborted migration never ended: {result.error}"
    kept = collect(lab, guest.name, test_report_dir / "aborted", result)
    names = {p.name for p in kept}
    assert {f"{src_host.name}-{guest.name}.qemu.log", f"{src_host.name}-{guest.name}.serial",
            f"{src_host.name}-libvirtd.log", "migration-result.json"} <= names, names
    guest.agent("dirty", 0, 0)
    assert check_intact(guest, before, lab.hosts, src_host) == []
    with pytest.raises(libvirt.libvirtError):
        dst_host.connect().lookupByName(guest.name)


@pytest.mark.smoke
def test_cancel_mid_migration_leaves_the_guest_on_the_source(lab, guest, src_host, dst_host, record):
    before = take_fingerprint(guest, seed=5, fill_mib=64)  # 64 MiB that must really cross the link
    params = Scenario("cancel", MigrationParams(bandwidth_mibs=4, timeout_s=60)).with_lab(lab, dst_host.address)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=migrate(guest.name, src_host, dst_host, params)))
    worker.start()
    dom = src_host.connect().lookupByName(guest.name)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_UNBOUNDED:
        time.sleep(0.05)
    time.sleep(1.0)
    dom.abortJob()
    # Past its budget the watchdog aborts too, and a call that still does not return is given up (call_hung).
    worker.join(timeout=params.timeout_s + ABORT_GRACE_S + 30)
    assert "r" in outcome, "the cancelled migration's call is still blocked"
    result = outcome["r"]
    assert not result.call_hung, f"the cancelled migration never ended: {result.error}"
    record({"kind": "live-migration", "scenario": "cancel-mid-migration", "ok": result.ok, "error": result.error})
    # libvirt words a cancel differently depending on the phase it hits ("canceled by client",
    # or an I/O error from the destination connection): what matters is where the guest is.
    assert not result.ok, "the cancelled migration reported success"
    assert check_intact(guest, before, lab.hosts, src_host) == []
    with pytest.raises(libvirt.libvirtError):
        dst_host.connect().lookupByName(guest.name)


@pytest.mark.smoke
def test_copy_storage_without_a_destination_image_fails_and_leaves_the_guest_whole(
        lab, guest_factory, src_host, dst_host, shared_lab, record):
    """libvirt 9.0 does not pre-create a plain file image for copy-storage: the migration must fail cleanly."""
    guest = guest_factory(storage="local")
    before = take_fingerprint(guest)
    dst_host.run(f"rm -f {guest.config.disk}")
    params = Scenario("copy", MigrationParams(copy_storage=True), storage="local").with_lab(lab, dst_host.address)
    result = migrate(guest.name, src_host, dst_host, params)
    record({"kind": "live-migration", "scenario": "copy-storage-no-destination-image", "ok": result.ok,
            "error": result.error})
    assert not result.ok, "copy-storage migration succeeded without a destination image"
    assert check_intact(guest, before, lab.hosts, src_host) == []
    with pytest.raises(libvirt.libvirtError):
        dst_host.connect().lookupByName(guest.name)

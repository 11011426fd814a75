"""Cold migration, and the same guest moved live and cold side by side.

Cold: clean shutdown, definition moved (offline migration, persistent on the
destination, undefined on the source), disk copied with a checksum where
storage is not shared, boot on the destination. Live vs cold: one guest, one
storage mode, both measured the same way (UDP echo from the runner).
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import libvirt
import pytest

from lab.calibration.model import expect_cold
from lab.errors import MigrationError, PreflightError
from lab.migration.cold import cold_migrate, cold_preflight, interruption_s, start_on, wait_echo
from lab.migration.degradation import degradation
from lab.migration.measure import AFTER_NS
from lab.migration.integrity import inspect, take_fingerprint
from lab.migration.live import MigrationParams, migrate
from lab.results.verdicts import Stack, judge

pytestmark = pytest.mark.lab
STORAGE = [pytest.param("shared", id="shared", marks=pytest.mark.smoke), pytest.param("local", id="local-copied")]


def _mark(guest, disk_mib=8):
    """Known data on disk and in memory; returns the disk checksum the guest computed."""
    guest.agent("fill", 42, 32, timeout=60)
    return guest.agent("diskwrite", 42, disk_mib, timeout=60)["sum"]


def _cold(lab, guest, src, dst, storage):
    copy = storage == "local"
    cold_preflight(lab, guest, dst, copy)
    return cold_migrate(guest, src, dst, copy=copy)


def _assert_whole_after_cold(guest, before_boot, disk_sum, dst, hosts):
    info = guest.info()
    assert info["boot_id"] != before_boot, "cold migration must boot the guest afresh"
    assert guest.agent("disksum", 8, timeout=60)["sum"] == disk_sum, "disk contents changed"
    guest.agent("fill", 42, 32, timeout=60)  # memory does not survive a cold move: re-establish, then verify
    assert guest.agent("verify", timeout=60)["bad_words"] == "0"
    assert [h.name for h in guest.locate(hosts)] == [dst.name]
    dom = dst.connect().lookupByName(guest.name)
    assert dom.isPersistent()


@pytest.mark.parametrize("storage", STORAGE)
def test_cold_migration_moves_the_guest_and_its_disk(storage, lab, guest_factory, thresholds, record, calibration):
    # Alone on the machine (calibration holds the measurement lock): its interruption is judged against the
    # calibrated cold move, measured alone too. A shared hold as well would wait on itself.
    src, dst = lab.hosts[0], lab.hosts[1]
    limit_s, basis = thresholds.for_cold(storage, calibration and expect_cold(
        calibration, lab.config.guest.disk_mib if storage == "local" else 0))
    guest = guest_factory(storage=storage)
    disk_sum, boot = _mark(guest), guest.info()["boot_id"]
    prober = guest.echo_prober()
    wait_echo(prober, 0)
    result = _cold(lab, guest, src, dst, storage)
    assert result.ok, result.error
    wait_echo(prober, result.finished_ns)
    interruption = interruption_s(prober, result.started_ns)
    record({"kind": "cold-migration", **result.as_record(), "interruption_s": interruption,
            "limit_s": limit_s, "limit_basis": basis},
           {"cold_interruption_s": round(interruption, 2), "cold_total_s": round(result.total_s, 2),
            "cold_bytes_copied": result.bytes_copied})
    _assert_whole_after_cold(guest, boot, disk_sum, dst, lab.hosts)
    with pytest.raises(libvirt.libvirtError):
        src.connect().lookupByName(guest.name)  # undefined on the source
    if storage == "local":
        assert result.bytes_copied > 8 << 20 and len(result.disk_sha256) == 64
    assert interruption <= limit_s, (
        f"cold-{storage}: service interruption {interruption:.1f} s exceeds the limit of {limit_s:g} s ({basis})")


@pytest.mark.timing
@pytest.mark.parametrize("storage", ["shared", pytest.param("local", id="local-copied")])
def test_live_and_cold_contrasted_on_the_same_guest(storage, lab, guest_factory, measurement_lock, thresholds,
                                                    record, report_dir, host_versions, known_defects, settle):
    src, dst = lab.hosts[0], lab.hosts[1]
    guest = guest_factory(storage=storage)
    before = take_fingerprint(guest, seed=42, disk_mib=8)
    prober = guest.echo_prober()
    wait_echo(prober, 0)
    boot = before.boot_id

    if storage == "local":
        info = guest.host.run(f"qemu-img info -U --output=json {guest.config.disk}").stdout
        size = __import__("json").loads(info)["virtual-size"]
        dst.run(f"qemu-img create -q -f qcow2 {guest.config.disk} {size}")
    params = MigrationParams(copy_storage=storage == "local", unsafe=lab.needs_unsafe(storage),
                             migrate_uri=f"tcp://{dst.address}")
    live = migrate(guest.name, src, dst, params)
    assert live.ok, live.error
    guest.host = dst
    # The live move ends with a memory verdict like every live migration: the dirty-page oracle, the
    # fill pattern, the disk, the boot. A finding decides the test before the cold half runs.
    after = inspect(guest, before, lab.hosts, dst, disk_mib=8)
    record({"kind": "live-migration", "scenario": f"contrast-{storage}", "oracle": after.oracle,
            "findings": [{"kind": f.kind.value, "text": f.text} for f in after.findings]})
    if after.findings:
        settle(judge(after.findings, Stack.of(host_versions[src.name], lab.accelerator),
                     known_defects))
    wait_echo(prober, live.finished_ns)
    live_row = {"mode": "live", "interruption_s": interruption_s(prober, live.started_ns),
                "total_s": live.wall_s, "bytes_moved": live.stats.get("memory_processed", 0) + live.stats.get("disk_processed", 0),
                "rebooted": guest.info()["boot_id"] != boot, **_pace_row(guest, prober, live)}

    cold = _cold(lab, guest, dst, src, storage)  # back again, cold
    assert cold.ok, cold.error
    wait_echo(prober, cold.finished_ns)
    cold_row = {"mode": "cold", "interruption_s": interruption_s(prober, cold.started_ns), "total_s": cold.total_s,
                "bytes_moved": cold.bytes_copied, "rebooted": guest.info()["boot_id"] != boot, "phases_s": cold.phases_s,
                **_pace_row(guest, prober, cold)}
    rows = [live_row, cold_row]
    record({"kind": "contrast", "storage": storage, "guest": guest.name, "rows": rows},
           {"live_interruption_s": round(live_row["interruption_s"], 3),
            "cold_interruption_s": round(cold_row["interruption_s"], 3)})
    _append_contrast_table(report_dir, storage, rows)

    ratio = thresholds.cold.live_vs_cold_max_ratio
    assert cold_row["rebooted"], "cold migration did not reboot the guest (it must boot afresh)"
    assert live_row["interruption_s"] < cold_row["interruption_s"] * ratio, (
        f"{storage}: live interruption {live_row['interruption_s']:.3f} s is not below {ratio:g} x "
        f"cold's {cold_row['interruption_s']:.3f} s")


def _pace_row(guest, prober, move) -> dict:
    """The FAQ's second half, degradation, for either kind of move: the guest's pace (its steady work, units per
    second) while it moved and just after, as a share of its pace before (degradation.py). A cold move has the
    guest off while it moves: no pace at all, and after it a new boot."""
    time.sleep(max(0.0, (move.finished_ns + AFTER_NS - time.time_ns()) / 1e9))
    stop = guest.heartbeats.window(move.started_ns, move.finished_ns)
    doc = degradation(guest.heartbeats, prober, move.started_ns, move.finished_ns, move.finished_ns + AFTER_NS,
                      gap=(stop.gap_start_ns, stop.gap_start_ns + int(stop.max_gap_ms * 1e6)))
    before, after = doc["before"].get("units_per_s"), doc["after"].get("units_per_s")
    return {"pace_during_pct": doc["pace_during_pct"],
            "pace_after_pct": round(100 * after / before, 1) if before and after else None, "degradation": doc}


def _pct(value) -> str:
    return "- (guest off)" if value is None else f"{value:.0f} %"


def _append_contrast_table(report_dir: Path, storage: str, rows: list[dict]) -> None:
    path = report_dir / "contrast.md"
    if not path.exists():
        path.write_text("| storage | mode | service interruption | guest's pace while it moved | pace just after | "
                        "total time | bytes moved | guest rebooted |\n|---|---|---|---|---|---|---|---|\n")
    with path.open("a") as fh:
        for r in rows:
            fh.write(f"| {storage} | {r['mode']} | {r['interruption_s'] * 1000:.0f} ms | {_pct(r['pace_during_pct'])} | "
                     f"{_pct(r['pace_after_pct'])} | {r['total_s']:.2f} s | {r['bytes_moved'] / 2**20:.1f} MiB | "
                     f"{'yes' if r['rebooted'] else 'no'} |\n")


def test_destination_without_the_disk_path_is_refused_by_preflight_before_anything_moves(
        lab, guest_factory, shared_lab):
    src, dst = lab.hosts[0], lab.hosts[1]
    only_src = f"{lab.storage_path('local')}/cold-only-{src.name}"
    src.run(f"mkdir -p {only_src}")
    guest = guest_factory(storage="local", disk_dir=only_src)
    boot = guest.info()["boot_id"]
    with pytest.raises(PreflightError, match=rf"storage-filesystem: FAIL: .*{dst.name} {only_src}: missing"):
        cold_preflight(lab, guest, dst, copy=True)
    assert guest.info()["boot_id"] == boot and [h.name for h in guest.locate(lab.hosts)] == [src.name]


def test_interrupted_copy_leaves_the_source_definition_and_disk_and_the_guest_starts_there_again(
        lab, guest_factory, shared_lab, record):
    src, dst = lab.hosts[0], lab.hosts[1]
    guest = guest_factory(storage="local")
    disk_sum = guest.agent("diskwrite", 7, 24, timeout=60)["sum"]
    stop = threading.Event()
    timer = threading.Timer(3.0, stop.set)  # cancel mid-copy: shutdown takes ~1 s, the copy runs at 4 MiB/s
    timer.start()
    try:
        result = cold_migrate(guest, src, dst, copy=True, cancel=stop, copy_rate_mibs=4)
    finally:
        timer.cancel()
    record({"kind": "cold-migration", "scenario": "copy-interrupted", **result.as_record()})
    assert not result.ok and "cancelled" in result.error, result.error
    assert dst.run(f"ls {guest.config.disk}* 2>/dev/null | wc -l").stdout.strip() == "0", "partial copy left behind"
    with pytest.raises(libvirt.libvirtError):
        dst.connect().lookupByName(guest.name)
    assert src.connect().lookupByName(guest.name).isPersistent()
    start_on(guest, src)
    assert guest.agent("disksum", 24, timeout=60)["sum"] == disk_sum


def test_destination_with_a_domain_of_that_name_is_refused_and_nothing_is_overwritten(
        lab, guest_factory, shared_lab):
    src, dst = lab.hosts[0], lab.hosts[1]
    guest = guest_factory()
    impostor = guest_factory(host=dst, name=guest.name + "-x", start=False, wait=False)
    xml = re.sub(r"<uuid>.*?</uuid>", "", impostor.domain(dst).XMLDesc(0)).replace(impostor.name, guest.name)
    dst.connect().defineXML(xml)
    try:
        before = dst.connect().lookupByName(guest.name).XMLDesc(0)
        boot = guest.info()["boot_id"]
        with pytest.raises(MigrationError, match=rf"{dst.name} already has a domain named '{guest.name}': refusing"):
            cold_migrate(guest, src, dst, copy=False)
        assert dst.connect().lookupByName(guest.name).XMLDesc(0) == before
        assert guest.info()["boot_id"] == boot, "the guest was touched"
    finally:
        dst.connect().lookupByName(guest.name).undefine()

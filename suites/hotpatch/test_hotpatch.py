"""QEMU hot patches end to end with libcareplus, on the lab's hosts.

Guests run on the lab's own QEMU (built from the distro source package of the
installed version, through libcare-patch-make's original stage); kpatches are
built against that binary, loaded into running guests' QEMU processes,
verified through QMP, measured (the guest's heartbeat stall during the apply),
stacked, taken back out, migrated; and the FAQ's two classic failures are
provoked and diagnosed. QEMU processes are reached through their lab host
(libvirt's pid file, /proc and libcare-ctl there, over SSH), so the suite does
not depend on the runner sharing the hosts' process table.

Without libcareplus every test here that needs it skips, saying how to get it;
the QEMU source build (plain, no libcareplus) still runs.
"""
from __future__ import annotations

import json
import os
import time

import libvirt_qemu
import pytest

from lab.migration.integrity import inspect, take_fingerprint
from lab.results.records import write_series
from lab.results.verdicts import Stack, judge
from lab.guest.domain import EMULATOR
from lab.hotpatch.diagnosis import BuildIdMismatch, HotpatchFailed
from lab.hotpatch.kpatch import read_kpatch_header
from lab.hotpatch.process_site import HostSite, qemu_pid as libvirt_qemu_pid
from lab.hotpatch.qemu_build import ensure_qemu_build, pkgversion
from lab.hotpatch.qemu_source import installed_source
from lab.migration.live import MigrationParams, migrate
from lab.util.elf import build_id as elf_build_id
from lab.util.process import run
from suites.hotpatch.conftest import PACKAGE_SUFFIX

pytestmark = [pytest.mark.lab, pytest.mark.slow]
hotpatch = pytest.mark.hotpatch
SETTLE_S = 0.5  # quiet time on either side of a measured apply


# -- helpers ------------------------------------------------------------------

def qemu_pid(guest, host=None, emulator: str | None = None) -> int:
    """The guest's QEMU process on its host, checked there to run `emulator`."""
    host = host or guest.host
    pid = libvirt_qemu_pid(host, guest.name)
    if emulator:
        site = HostSite(host)
        exe = site.exe(pid)
        assert exe == site.realpath(emulator), f"{guest.name}: QEMU PID {pid} runs {exe}, not {emulator}"
    return pid


def qmp(guest, command: str, host=None) -> dict:
    reply = libvirt_qemu.qemuMonitorCommand(guest.domain(host), json.dumps({"execute": command}), 0)
    return json.loads(reply)["return"]


def package(guest, host=None) -> str:
    return qmp(guest, "query-version", host)["package"]


def applied(libcare, pid: int, host) -> list[tuple[str, tuple[str, ...]]]:
    return [(entry.buildid, entry.patch_ids) for entry in libcare.info(pid, host)]


def measured(guest, action, name: str):
    """Run action() between two quiet windows; returns (its result, stall GapStats, baseline GapStats, series):
    the series is the heartbeats' arrival times across both windows, for the report's timeline."""
    time.sleep(SETTLE_S)
    before = time.time_ns()
    time.sleep(SETTLE_S)
    start = time.time_ns()
    result = action()
    end = time.time_ns()
    time.sleep(SETTLE_S)
    after = time.time_ns()
    baseline = guest.heartbeats.window(before, start)
    stall = guest.heartbeats.window(start, after)
    series = {"action": name, "started_ns": start, "finished_ns": end, "window_end_ns": after,
              "heartbeat_ns": guest.heartbeats.arrivals(before, after)}
    return result, stall, baseline, series


def assert_alive(guest, since_ns: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while guest.heartbeats.count_since(since_ns) < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert guest.heartbeats.count_since(since_ns) >= 50, f"{guest.name}: no heartbeats after {what}"


def verdict_record(record, kind: str, diagnosis, **extra) -> None:
    record({"kind": kind, "verdict": diagnosis.verdict, "diagnosis": diagnosis.kind,
            "evidence": list(diagnosis.evidence), **extra})


# -- the QEMU to patch (no libcareplus needed) --------------------------------

def test_qemu_builds_from_the_distro_source_package_and_runs_a_lab_guest(lab, lab_config, guest_factory, shared_lab,
                                                                         build_progress, record):
    """The plain build path: same source, same configuration, no libcareplus; a lab guest boots on it."""
    source = installed_source()
    started = time.monotonic()
    build = ensure_qemu_build(lab_config.hotpatch.build_cache, mode="plain", progress=build_progress)
    version = run([build.emulator, "--version"], check=False, timeout=30).stdout
    assert source.version.split(":")[-1].split("+")[0] in version, version
    assert pkgversion(source) in version, f"{build.emulator} --version does not name the lab build: {version}"
    assert build.buildid == elf_build_id(build.binary)
    guest = guest_factory(host=lab.hosts[0], emulator=build.emulator)
    assert qemu_pid(guest, emulator=build.emulator)
    assert package(guest) == pkgversion(source)
    record({"kind": "qemu-source-build", "mode": "plain", "source_version": source.version,
            "installed_version": source.installed, "binary": build.emulator, "buildid": build.buildid,
            "build_minutes": build.minutes, "cached": time.monotonic() - started < 60},
           {"qemu_plain_build_min": build.minutes})


# -- building kpatches --------------------------------------------------------

@hotpatch
def test_kpatch_is_named_and_labelled_with_the_target_binarys_buildid(libcare, target, kpatch, record):
    result = kpatch("0001")
    assert len(result.kpatch_paths) == 1, f"expected one kpatch (qemu-system-x86_64 only), got {result.kpatch_paths}"
    path = result.kpatch_paths[0]
    dumped = libcare.header(path)
    direct = read_kpatch_header(path)
    assert os.path.basename(path) == f"{target.buildid}.kpatch"
    assert dumped.buildid == direct.buildid == target.buildid == elf_build_id(target.emulator)
    assert dumped.patch_id == direct.patch_id == "0001"
    record({"kind": "hotpatch-build", "patch_id": "0001", "kpatch": path, "buildid": dumped.buildid,
            "target": target.emulator, "installed_target": target.installed,
            "qemu_build_minutes": target.build.minutes, "kpatch_build_seconds": result.seconds},
           {"qemu_libcare_build_min": target.build.minutes, "kpatch_build_s": result.seconds})


# -- loading into a running guest's QEMU --------------------------------------

@hotpatch
@pytest.mark.timing
def test_apply_changes_behaviour_with_a_bounded_stall_and_unapply_restores_it(
        libcare, lab, target, kpatch, guest_factory, measurement_lock, hotpatch_thresholds, repeat, record,
        report_dir):
    path = kpatch("0001").kpatch_paths[0]
    guest = guest_factory(host=lab.hosts[0], emulator=target.emulator)
    host = guest.host
    pid = qemu_pid(guest, emulator=target.emulator)
    assert package(guest) == target.package
    assert applied(libcare, pid, host) == []
    stalls, frozen, unstalls = [], [], []
    for i in range(repeat):
        result, stall, baseline, series = measured(guest, lambda: libcare.apply(pid, path, host), "apply")
        assert result.frozen_time_us is not None, f"libcare-ctl printed no frozen_time: {result.raw_output[-300:]}"
        info = libcare.info(pid, host)
        assert [(e.buildid, e.patch_ids) for e in info] == [(target.buildid, ("0001",))], info
        assert package(guest) == target.package + PACKAGE_SUFFIX["0001"]
        assert stall.lost == 0 and stall.reordered == 0, f"apply {i + 1}: heartbeats lost/reordered: {stall}"
        undo, unstall, _, unseries = measured(guest, lambda: libcare.unapply(pid, "0001", host), "unapply")
        assert applied(libcare, pid, host) == []
        assert package(guest) == target.package
        assert unstall.lost == 0, f"unapply {i + 1}: heartbeats lost: {unstall}"
        # The probe must see the freeze libcare-ctl reports (no heartbeat leaves a stopped QEMU).
        frozen_ms = result.frozen_time_us / 1000
        assert stall.max_gap_ms >= frozen_ms * 0.75 - 2, (
            f"apply {i + 1}: heartbeat gap {stall.max_gap_ms:.1f} ms is well below libcare-ctl's frozen_time "
            f"{frozen_ms:.1f} ms: the probe missed the stall")
        stalls.append(stall.max_gap_ms)
        frozen.append(result.frozen_time_us / 1000)
        unstalls.append(unstall.max_gap_ms)
        record({"kind": "hotpatch-apply", "repetition": i + 1, "of": repeat, "patch_id": "0001", "pid": pid,
                "accelerator": lab.accelerator, "frozen_time_us": result.frozen_time_us, "hunks": result.hunks,
                "apply_seconds": result.seconds, "stall_ms": stall.max_gap_ms, "baseline_max_gap_ms":
                baseline.max_gap_ms, "heartbeats_in_window": stall.received, "unapply_frozen_time_us":
                undo.frozen_time_us, "unapply_stall_ms": unstall.max_gap_ms, "thresholds": hotpatch_thresholds,
                "series": write_series(report_dir, f"{guest.name}-apply-{i + 1}", series)})
        record({"kind": "hotpatch-unapply", "repetition": i + 1, "of": repeat, "patch_id": "0001", "pid": pid,
                "frozen_time_us": undo.frozen_time_us, "stall_ms": unstall.max_gap_ms,
                "series": write_series(report_dir, f"{guest.name}-unapply-{i + 1}", unseries)})
    figures = {"hotpatch_apply_stall_ms_max": round(max(stalls), 1),
               "hotpatch_apply_frozen_ms_max": round(max(frozen), 1),
               "hotpatch_unapply_stall_ms_max": round(max(unstalls), 1)}
    record({"kind": "hotpatch-apply-summary", "repetitions": repeat, "stall_ms": stalls, "frozen_ms": frozen,
            "unapply_stall_ms": unstalls, "thresholds": hotpatch_thresholds}, figures)
    problems = []
    if max(stalls) > hotpatch_thresholds["apply_stall_ms"]:
        problems.append(f"apply stall {max(stalls):.1f} ms > {hotpatch_thresholds['apply_stall_ms']:.0f} ms")
    if max(frozen) > hotpatch_thresholds["apply_frozen_ms"]:
        problems.append(f"apply frozen_time {max(frozen):.1f} ms > {hotpatch_thresholds['apply_frozen_ms']:.0f} ms")
    if max(unstalls) > hotpatch_thresholds["unapply_stall_ms"]:
        problems.append(f"unapply stall {max(unstalls):.1f} ms > {hotpatch_thresholds['unapply_stall_ms']:.0f} ms")
    assert not problems, "; ".join(problems) + f" (over {repeat} applies; thresholds {hotpatch_thresholds})"


@hotpatch
def test_patch_levels_stack_and_unapply_in_order(libcare, lab, target, kpatch, guest_factory, shared_lab, record):
    first, second = kpatch("0001").kpatch_paths[0], kpatch("0002").kpatch_paths[0]
    guest = guest_factory(host=lab.hosts[0], emulator=target.emulator)
    host = guest.host
    pid = qemu_pid(guest, emulator=target.emulator)
    seen = [("none", package(guest))]
    libcare.apply(pid, first, host)
    seen.append(("0001", package(guest)))
    libcare.apply(pid, second, host)
    seen.append(("0001+0002", package(guest)))
    ids_both = applied(libcare, pid, host)
    libcare.unapply(pid, "0002", host)
    seen.append(("0001 after unapply 0002", package(guest)))
    ids_one = applied(libcare, pid, host)
    libcare.unapply(pid, "0001", host)
    seen.append(("none after unapply 0001", package(guest)))
    record({"kind": "hotpatch-levels", "packages": seen, "info_both": ids_both, "info_one": ids_one})
    assert ids_both == [(target.buildid, ("0001", "0002"))]
    assert ids_one == [(target.buildid, ("0001",))]
    assert applied(libcare, pid, host) == []
    assert [p for _, p in seen] == [target.package, target.package + PACKAGE_SUFFIX["0001"],
                                    target.package + PACKAGE_SUFFIX["0002"], target.package + PACKAGE_SUFFIX["0001"],
                                    target.package]


@hotpatch
def test_patched_guest_live_migrates_and_the_destination_is_patched_after_arrival(
        libcare, lab, target, kpatch, guest_factory, shared_lab, record, host_versions, known_defects, settle):
    """A hot patch lives in the source QEMU process's memory: migration does not carry it.

    The destination starts a fresh QEMU from the same (unpatched) binary; the
    harness checks that the migrated guest first shows the original behaviour
    there, then applies the patch on the destination and checks the new one.
    """
    path = kpatch("0001").kpatch_paths[0]
    src, dst = lab.hosts[0], lab.hosts[1]
    guest = guest_factory(host=src, emulator=target.emulator)
    libcare.apply(qemu_pid(guest, emulator=target.emulator), path, src)
    assert package(guest) == target.package + PACKAGE_SUFFIX["0001"]
    before = take_fingerprint(guest)
    since = time.time_ns()
    result = migrate(guest.name, src, dst, MigrationParams(unsafe=lab.needs_unsafe(guest.storage),
                                                           migrate_uri=f"tcp://{dst.address}"))
    assert result.ok, f"migration of a patched guest failed: {result.error}"
    guest.host = dst
    after = inspect(guest, before, lab.hosts, dst)  # the memory verdict every live migration ends with
    record({"kind": "live-migration", "scenario": "hotpatched-guest", "oracle": after.oracle,
            "findings": [{"kind": f.kind.value, "text": f.text} for f in after.findings]})
    if after.findings:
        settle(judge(after.findings, Stack.of(host_versions[src.name], lab.accelerator),
                     known_defects))
    assert_alive(guest, since, "the migration")
    dst_pid = qemu_pid(guest, dst, emulator=target.emulator)
    on_arrival = package(guest, dst)
    info_on_arrival = applied(libcare, dst_pid, dst)
    libcare.apply(dst_pid, path, dst)
    after_apply = package(guest, dst)
    record({"kind": "hotpatch-migration", "destination": dst.name,
            "destination_binary": "same unpatched binary (fresh QEMU process); patch re-applied after arrival",
            "package_on_arrival": on_arrival, "info_on_arrival": info_on_arrival, "package_after_apply": after_apply,
            "migration_ok": result.ok})
    assert on_arrival == target.package, "the destination QEMU should run the unpatched binary"
    assert info_on_arrival == []
    assert after_apply == target.package + PACKAGE_SUFFIX["0001"]
    assert applied(libcare, dst_pid, dst) == [(target.buildid, ("0001",))]


# -- diagnosis of the FAQ's failures ------------------------------------------

@hotpatch
def test_a_patch_for_another_qemu_build_is_diagnosed_as_a_buildid_mismatch(
        libcare, lab, target, kpatch, guest_factory, shared_lab, record):
    """The lab build's kpatch against a guest on the distro's own QEMU binary (another build of the same source)."""
    path = kpatch("0001").kpatch_paths[0]
    guest = guest_factory(host=lab.hosts[0], emulator=EMULATOR)
    host = guest.host
    pid = qemu_pid(guest, emulator=EMULATOR)
    binary = HostSite(host).exe_copy(pid)  # the binary the host's QEMU runs, fetched from there unless shared
    assert binary, f"{host.name}: cannot read /proc/{pid}/exe"
    distro_id = elf_build_id(binary)
    assert distro_id != target.buildid, "the distro binary and the lab build have the same buildID; nothing to test"
    before = package(guest)
    with pytest.raises(HotpatchFailed) as caught:
        libcare.apply(pid, path, host)
    diagnosis = caught.value.diagnosis
    verdict_record(record, "hotpatch-diagnosis", diagnosis, case="buildid-mismatch")
    assert isinstance(diagnosis, BuildIdMismatch), diagnosis.report()
    assert (diagnosis.patch_buildid, diagnosis.binary_buildid) == (target.buildid, distro_id)
    assert target.buildid in diagnosis.verdict and distro_id in diagnosis.verdict and "remedy:" in diagnosis.verdict
    assert "\n" not in diagnosis.verdict
    assert any("No patch(es) applicable" in e for e in diagnosis.evidence)
    assert applied(libcare, pid, host) == [] and package(guest) == before


@hotpatch
def test_a_function_always_on_a_threads_stack_fails_the_safety_check(
        libcare, lab, target, kpatch, guest_factory, shared_lab, record, report_dir):
    path = kpatch("stack").kpatch_paths[0]
    guest = guest_factory(host=lab.hosts[0], emulator=target.emulator)
    host = guest.host
    pid = qemu_pid(guest, emulator=target.emulator)

    def refused():
        with pytest.raises(HotpatchFailed) as caught:
            libcare.apply(pid, path, host)
        return caught

    caught, stall, _, series = measured(guest, refused, "refused apply")
    since = time.time_ns()
    diagnosis = caught.value.diagnosis
    # libcareplus lets the thread run (others stopped) for up to 3 s hoping it leaves the function: the guest stalls
    verdict_record(record, "hotpatch-diagnosis", diagnosis, case="unsafe-on-stack",
                   refused_apply_stall_ms=stall.max_gap_ms,
                   series=write_series(report_dir, f"{guest.name}-refused-apply", series))
    assert diagnosis.kind == "unsafe-on-stack", diagnosis.report()
    assert "qemu_main_loop" in diagnosis.verdict and "\n" not in diagnosis.verdict
    assert any("safety check failed" in e for e in diagnosis.evidence)
    # Refused, not half-applied: QEMU keeps running unpatched.
    assert applied(libcare, pid, host) == []
    assert package(guest) == target.package
    assert_alive(guest, since, "the refused apply")


@hotpatch
def test_a_function_shorter_than_5_bytes_is_refused_at_build_time(target, kpatch, record):
    with pytest.raises(HotpatchFailed) as caught:
        kpatch("tiny")
    diagnosis = caught.value.diagnosis
    verdict_record(record, "hotpatch-diagnosis", diagnosis, case="function-too-small")
    assert diagnosis.kind == "function-too-small", diagnosis.report()
    assert "object_property_allow_set_link" in diagnosis.verdict and "\n" not in diagnosis.verdict
    assert any("too small function to patch" in e for e in diagnosis.evidence)

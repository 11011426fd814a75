"""Fixtures for the live migration suite: a measured-migration runner that records everything."""
from __future__ import annotations

import json

import pytest

from lab.calibration.model import Setting, expect, underreport_allowance_ms
from lab.errors import LabError
from lab.migration.degradation import degradation_findings
from lab.migration.external_oracle import verify_from_outside
from lab.migration.integrity import inspect, take_fingerprint
from lab.migration.measure import measure_migration, thresholds_record, verdict
from lab.results.evidence import collect
from lab.results.records import write_series
from lab.results.verdicts import Finding, Kind, Stack, at_move, judge


DISK_STREAM_BLOCKS_PER_S = 200  # 4 KiB O_DSYNC writes in flight during a copy-storage migration


def disk_stream_findings(guest) -> tuple[dict, list[Finding]]:
    """Stop the in-flight writer, then read back every block it had acknowledged (on the destination now)."""
    try:
        stopped = guest.agent("diskstream", "stop", timeout=60)
        checked = guest.agent("diskstream", "check", timeout=120)
    except LabError as exc:
        return {"error": str(exc)}, [Finding(Kind.DISK_CHANGED, f"the disk writer in flight could not be checked: {exc}")]
    doc = {"acked": int(stopped["acked"]), "checked": int(checked["checked"]), "wrong": int(checked["wrong"]),
           "writer_error": stopped.get("error")}
    findings = []
    if doc["wrong"]:
        findings.append(Finding(Kind.DISK_CHANGED, f"{doc['wrong']} of {doc['checked']} acknowledged in-flight disk "
                                                   f"writes are not on the destination (first: block {checked['first_wrong']})"))
    if doc["acked"] == 0:
        findings.append(Finding(Kind.DISK_CHANGED, f"the disk writer acknowledged no write during the migration "
                                                   f"({stopped.get('error')})"))
    return doc, findings


def precreate_disk(guest, host) -> None:
    """Non-shared storage: the destination needs an image of the same size to copy into."""
    # -U: the running guest holds the image's lock; reading its size is safe.
    info = guest.host.run(f"qemu-img info -U --output=json {guest.config.disk}").stdout
    virtual = json.loads(info)["virtual-size"]
    host.run(f"qemu-img create -q -f qcow2 {guest.config.disk} {virtual}")


def lab_tolerance(thresholds, calibration):
    """The stated tolerances, libvirt's under-report bound raised by what this lab's idle moves show (the guest's
    silence beyond libvirt's figure, times the downtime factor): the stated bound is the runner's noise on top
    of the lab's own excess (seen: 129 ms silent against libvirt's 19 ms on a clean build whose calibrated
    excess was 36.5 ms; the larger of the two alone, 109.5 ms, was a false alarm)."""
    tolerance = thresholds.tolerance
    if calibration is None or thresholds.model is None:
        return tolerance
    allowance = underreport_allowance_ms(calibration, thresholds.model.downtime_factor)
    return tolerance.model_copy(update={"hypervisor_underreport_ms": round(tolerance.hypervisor_underreport_ms
                                                                           + allowance, 1)})


def scenario_limits(thresholds, calibration, scenario, disk_mib: int):
    """The scenario's limits: the model's figures for this calibration times the factors, or hand-set ones."""
    expectation = None
    if calibration is not None:
        expectation = expect(calibration, Setting.of(scenario.params, scenario.dirty_mibs, scenario.dirty_region_mib,
                                                     disk_mib))
    return thresholds.for_scenario(scenario.id, expectation)


@pytest.fixture
def run_measured(lab, thresholds, calibration, repeat, host_versions, known_defects, record, report_dir,
                 test_report_dir):
    """Run a scenario --repeat times (alternating direction, the same guest: records say so), inspect the
    guest after each move, then judge every finding against the limits (the model's for this lab's
    calibration, or hand-set) and the known defects."""

    def run(scenario, guest):
        before = take_fingerprint(guest)
        if scenario.dirty_mibs:
            guest.agent("dirty", scenario.dirty_mibs, scenario.dirty_region_mib)
        limits = scenario_limits(thresholds, calibration, scenario, lab.config.guest.disk_mib)
        period_ms = lab.config.guest.heartbeat_us / 1000
        count = repeat * 2 if scenario.ping_pong else repeat
        measurements, findings = [], []
        src, dst = lab.hosts[0], lab.hosts[1]
        stack = Stack.of(host_versions[src.name], lab.accelerator, scenario.params.mode)

        def move_stacks(a, b) -> tuple[Stack, Stack]:  # each move is judged by its own source and destination
            return tuple(Stack.of(host_versions[h.name], lab.accelerator, scenario.params.mode) for h in (a, b))

        if scenario.dirty_mibs and scenario.params.mode == "precopy":  # postcopy runs on the destination at once
            outside = at_move(verify_from_outside(lab, guest, before, src, dst, scenario.id,
                                                  scenario.with_lab(lab, dst.address), record), 0,
                              move_stacks(src, dst))
            findings += outside
            if any(f.kind in (Kind.GUEST_REBOOTED, Kind.SPLIT_BRAIN, Kind.MIGRATION_FAILED) for f in outside):
                count = 0  # the measured series would time another boot (or nothing)
            src, dst = dst, src
        for i in range(count):
            if scenario.storage == "local":
                precreate_disk(guest, dst)
            params = scenario.with_lab(lab, dst.address)
            if params.copy_storage:  # writes in flight while the disk is copied
                guest.agent("diskstream", "start", 7000 + i, DISK_STREAM_BLOCKS_PER_S)
            m = measure_migration(scenario.id, guest, src, dst, params, period_ms, lab_tolerance(thresholds, calibration),
                                  dirty_mibs_asked=scenario.dirty_mibs, dirty_region_mib=scenario.dirty_region_mib)
            after = inspect(guest, before, lab.hosts, dst) if m.result.ok else None
            stream = disk_stream_findings(guest) if params.copy_storage else (None, [])
            if after:
                after.findings.extend(stream[1])
            doc = m.record(host_versions, limits)
            doc.update(repetition=i + 1, of=count, same_guest_as_repetition_1=i > 0,
                       thresholds_file=thresholds_record(thresholds),
                       series=write_series(report_dir, f"{guest.name}-{i + 1}", m.series),
                       dirty_mibs_asked=scenario.dirty_mibs)
            if params.copy_storage:
                doc.update(disk_stream=stream[0])
            if after:
                doc.update(oracle=after.oracle, dirty_mibs_achieved=after.dirty_mibs,
                           integrity=[{"kind": f.kind.value, "text": f.text} for f in after.findings])
            record(doc)
            stacks = move_stacks(src, dst)
            m.findings += degradation_findings(m.degradation, limits.slowdown) if m.result.ok else []
            findings += at_move(m.findings, i + 1, stacks, f"{scenario.id}: migration {i + 1}: ")
            if not m.result.ok:
                kept = collect(lab, guest.name, test_report_dir / f"migration-{i + 1}", m.result)
                findings += at_move([Finding(Kind.MIGRATION_FAILED, f"{scenario.id}: migration {i + 1} {src.name} -> "
                                             f"{dst.name} failed: {m.result.error} (evidence: {len(kept)} files in "
                                             f"{test_report_dir})")], i + 1, stacks)
                break
            findings += at_move(after.findings, i + 1, stacks, f"after migration {i + 1} to {dst.name}: ")
            measurements.append(m)
            if any(f.kind in (Kind.GUEST_REBOOTED, Kind.SPLIT_BRAIN) for f in after.findings):
                collect(lab, guest.name, test_report_dir / f"migration-{i + 1}", m.result)
                break  # another boot (or two guests) from here on: later figures would not be this guest's
            src, dst = dst, src
        threshold_findings, summaries = verdict(scenario.id, measurements, limits) if measurements else ([], {})
        outcome = judge(threshold_findings + findings, stack, known_defects)
        figures = {f"{probe}_downtime_ms_max": round(s.max, 1) for probe, s in summaries.items() if probe != "total_s"}
        if "total_s" in summaries:
            figures["total_s_max"] = round(summaries["total_s"].max, 2)
        record({"kind": "live-migration-summary", "scenario": scenario.id, "verdict": outcome.as_record(),
                "summaries": {k: {**vars(v), "basis": v.basis} for k, v in summaries.items()},
                "thresholds": {"downtime_ms": limits.downtime_ms, "total_s": limits.total_s, "basis": limits.basis,
                               "model": limits.model},
                "calibration": calibration.as_record() if calibration else None}, figures)
        return measurements, outcome

    return run

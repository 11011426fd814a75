"""Live migration between hosts on different hypervisor stacks, both ways.

old -> new is a rolling upgrade, new -> old a rollback. The guest runs the older QEMU's versioned
machine type, so both QEMUs offer the same virtual hardware; every move is measured by the three
probes, the guest inspected after it (boot id, dirty-page oracle, fill pattern, disk, echo), and the
findings judged against the thresholds and the known-defect registry (the registry takes the
source's QEMU: lost pages are the source's dirty tracking). A dirtying load starts, as in the live
suite, with one move whose destination stays paused, the oracle's memory read from outside
(lab/migration/external_oracle.py: a guest the lost writes crash cannot report them itself); when
it finds pages lost or the guest crashed, the timed series is not run (it would time the defect).
A direction that libvirt or QEMU refuses by design is stated as such, with their message. Each
move is a fresh guest on the source, so every figure is of one move in the named direction.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from lab.migration.calibrate import calibrated
from lab.calibration.model import Setting, expect
from lab.errors import LabError
from lab.guest.domain import remove_guest
from lab.migration.external_oracle import migrate_checked_from_outside
from lab.migration.integrity import inspect, take_fingerprint
from lab.migration.live import MigrationParams, migrate
from lab.migration.measure import measure_migration, thresholds_record, verdict
from lab.results.evidence import collect
from lab.results.records import read_records, write_series
from lab.results.verdicts import Finding, Kind, Stack, at_move, judge
from lab.util.progress import StatusLine
from suites.cross_version.conftest import machine_types, refusal, version_tuple

pytestmark = pytest.mark.lab
DIRECTIONS = {"old-to-new": "rolling upgrade", "new-to-old": "rollback"}
LINK_MIBS = 16  # the dirty scenario's link, as in the live suite


@dataclass(frozen=True)
class Load:
    id: str
    dirty_mibs: int  # the agent's dirtying rate during the move (the oracle checks every page it wrote)
    bandwidth_mibs: int = 0


LOADS = [Load("idle", 0), Load(f"dirty-4MiBs-link-{LINK_MIBS}MiBs", 4, LINK_MIBS)]


def _params(lab, dst, load: Load) -> MigrationParams:
    return MigrationParams(migrate_uri=f"tcp://{dst.address}", unsafe=lab.needs_unsafe("shared"),
                           bandwidth_mibs=load.bandwidth_mibs)


def _expectation(lab, thresholds, old, new, machine, load: Load):
    """The model's figures for this pair (calibrated both ways: the limits do not take the slow direction's
    own pace as the norm; direction_findings compares the two)."""
    if thresholds.model is None:
        return None
    try:
        with StatusLine("kvm-lab calibrate", quiet_for_s=5) as progress:
            cal = calibrated(lab, old, new, thresholds.tolerance, progress, machine=machine)
    except LabError as exc:
        pytest.fail(f"kvm-lab: {exc}", pytrace=False)
    return expect(cal, Setting(bandwidth_mibs=load.bandwidth_mibs, dirty_mibs=load.dirty_mibs,
                               dirty_region_mib=64 if load.dirty_mibs else 0))


@pytest.mark.timing
@pytest.mark.parametrize("load", LOADS, ids=[load.id for load in LOADS])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_live_migration_across_stacks(direction, load, lab, stack_pair, pinned_machine, guest_factory,
                                      measurement_lock, thresholds, repeat, host_versions, known_defects, record,
                                      settle, report_dir, test_report_dir):
    old, new = stack_pair
    src, dst = (old, new) if direction == "old-to-new" else (new, old)
    scenario = f"cross-version-{direction}-{load.id}"
    limits = thresholds.for_scenario(scenario, _expectation(lab, thresholds, old, new, pinned_machine, load))
    period_ms = lab.config.guest.heartbeat_us / 1000
    stacks = {h.name: {"stack": h.stack, **host_versions[h.name]} for h in (src, dst)}
    measurements, findings = [], []
    count = repeat
    if load.dirty_mibs:
        findings += at_move(_oracle_move(lab, guest_factory, pinned_machine, src, dst, load, scenario, record), 0,
                            (Stack.of(host_versions[src.name], lab.accelerator),
                             Stack.of(host_versions[dst.name], lab.accelerator)))
        if findings:
            count = 0  # lost pages or a crash: the timed series would time the defect
    for i in range(count):
        guest = guest_factory(host=src, machine=pinned_machine)
        before = take_fingerprint(guest)
        if load.dirty_mibs:
            guest.agent("dirty", load.dirty_mibs, 64)
        m = measure_migration(scenario, guest, src, dst, _params(lab, dst, load), period_ms, thresholds.tolerance,
                              dirty_mibs_asked=load.dirty_mibs, dirty_region_mib=64)
        after = inspect(guest, before, lab.hosts, dst) if m.result.ok else None
        doc = m.record(host_versions, limits)
        doc.update(direction=direction, what=DIRECTIONS[direction], machine=pinned_machine, stacks=stacks,
                   repetition=i + 1, of=repeat, dirty_mibs_asked=load.dirty_mibs,
                   thresholds_file=thresholds_record(thresholds),
                   series=write_series(report_dir, f"{guest.name}-{i + 1}", m.series))
        if after:
            doc.update(oracle=after.oracle, dirty_mibs_achieved=after.dirty_mibs,
                       integrity=[{"kind": f.kind.value, "text": f.text} for f in after.findings])
        refused = refusal(m.result, dst) if not m.result.ok and i == 0 else ""  # by design: from the first move
        if refused:
            doc["refused_by_design"] = refused
            record(doc)
            collect(lab, guest.name, test_report_dir / f"migration-{i + 1}", m.result)
            pytest.skip(f"{direction} ({DIRECTIONS[direction]}) {src.name} [{src.stack}] -> {dst.name} "
                        f"[{dst.stack}] is refused by design: {refused}")
        record(doc)
        move = (Stack.of(host_versions[src.name], lab.accelerator), Stack.of(host_versions[dst.name], lab.accelerator))
        findings += at_move(m.findings, i + 1, move, f"{scenario}: migration {i + 1}: ")
        if not m.result.ok:
            kept = collect(lab, guest.name, test_report_dir / f"migration-{i + 1}", m.result)
            findings += at_move([Finding(Kind.MIGRATION_FAILED, f"{scenario}: migration {i + 1} {src.name} -> {dst.name} "
                                         f"failed: {m.result.error} (evidence from both hosts: {len(kept)} files in "
                                         f"{test_report_dir})")], i + 1, move)
            break
        findings += at_move(after.findings, i + 1, move, f"after migration {i + 1} to {dst.name}: ")
        measurements.append(m)
        if after.findings:
            collect(lab, guest.name, test_report_dir / f"migration-{i + 1}", m.result)
            break  # the evidence is kept; the guest is left for the fixture to collect and remove
        remove_guest(lab, guest)  # one guest at a time on two cores: the next repetition's figures are its own
    threshold_findings, summaries = verdict(scenario, measurements, limits) if measurements else ([], {})
    threshold_findings += direction_findings(report_dir, direction, load.id, summaries, thresholds.tolerance.direction_factor)
    # Each move is judged by its own stacks (verdicts.at_move); findings without a move by the source's.
    outcome = judge(threshold_findings + findings, Stack.of(host_versions[src.name], lab.accelerator), known_defects)
    figures = {f"{probe}_downtime_ms_max": round(s.max, 1) for probe, s in summaries.items() if probe != "total_s"}
    if "total_s" in summaries:
        figures["total_s_max"] = round(summaries["total_s"].max, 2)
    record({"kind": "cross-version-summary", "scenario": scenario, "direction": direction, "machine": pinned_machine,
            "stacks": stacks, "verdict": outcome.as_record(),
            "summaries": {k: {**vars(v), "basis": v.basis} for k, v in summaries.items()},
            "thresholds": {"downtime_ms": limits.downtime_ms, "total_s": limits.total_s}}, figures)
    settle(outcome)


def direction_findings(report_dir, direction: str, load_id: str, summaries: dict, factor: float) -> list[Finding]:
    """The other direction of the same load, if it ran before in this run (the two hold the measurement lock in
    turn): their median total time and guest downtime may differ by `factor` at most."""
    other = next((r for r in reversed(read_records(report_dir)) if r.get("kind") == "cross-version-summary"
                  and r.get("direction") not in (None, direction) and r.get("scenario", "").endswith(f"-{load_id}")),
                 None)
    if other is None:
        return []
    found = []
    for key, label in (("total_s", "total time"), ("guest", "guest downtime")):
        mine, theirs = summaries.get(key), (other.get("summaries") or {}).get(key)
        if mine is None or not theirs or min(mine.p50, theirs["p50"]) <= 0:
            continue
        ratio = max(mine.p50, theirs["p50"]) / min(mine.p50, theirs["p50"])
        if ratio > factor:
            found.append(Finding(Kind.THRESHOLD, f"{label}: {direction} median {mine.p50:.2f} against "
                                                 f"{other['direction']} {theirs['p50']:.2f}, {ratio:.1f} times apart, "
                                                 f"beyond the stated factor {factor:g} between the two directions"))
    return found


def _oracle_move(lab, guest_factory, machine, src, dst, load: Load, scenario: str, record) -> list[Finding]:
    """One untimed move of a fresh dirtying guest whose destination stays paused while the oracle's pages are
    read from outside; then the guest runs and is inspected. Its findings, each saying where they come from."""
    guest = guest_factory(host=src, machine=machine)
    before = take_fingerprint(guest)
    guest.agent("dirty", load.dirty_mibs, 64)
    result, doc, found = migrate_checked_from_outside(lab, guest, before, src, dst, _params(lab, dst, load))
    if not result.ok:
        return [Finding(Kind.MIGRATION_FAILED, f"{scenario}: the oracle's move {src.name} -> {dst.name} failed: "
                                               f"{refusal(result, dst) or result.error}")]
    record({"kind": "oracle-migration", "scenario": scenario, "src": src.name, "dst": dst.name, **doc})
    if not found:
        remove_guest(lab, guest)
    return [Finding(f.kind, f"oracle move to {dst.name}: {f.text}") for f in found]


def test_a_machine_type_the_older_qemu_lacks_is_refused_by_design(lab, stack_pair, pinned_machine, guest_factory,
                                                                  shared_lab, host_versions, record):
    """The refusal path, shown for real: a guest on the newer QEMU's own newest machine type cannot go to the
    older stack, libvirt says why, and the guest stays whole where it was."""
    old, new = stack_pair
    newest = max((m for m in machine_types(new) - machine_types(old) if m.startswith("pc-i440fx-")),
                 key=version_tuple, default=None)
    if newest is None:
        pytest.skip(f"{new.name}'s QEMU offers no pc-i440fx machine type that {old.name}'s lacks")
    guest = guest_factory(host=new, machine=newest)
    before = take_fingerprint(guest)
    result = migrate(guest.name, new, old, _params(lab, old, LOADS[0]))
    refused = refusal(result, old) if not result.ok else ""
    record({"kind": "cross-version-refusal", "src": new.name, "dst": old.name, "machine": newest, "ok": result.ok,
            "error": result.error, "refused_by_design": refused,
            "stacks": {h.name: {"stack": h.stack, **host_versions[h.name]} for h in (new, old)}})
    assert not result.ok, f"{new.name} -> {old.name} with machine type {newest} succeeded"
    assert refused and f"does not support machine type '{newest}'" in refused, result.error
    assert inspect(guest, before, lab.hosts, new).findings == []

"""Fixtures for the live migration suite: a measured-migration runner that records everything."""
from __future__ import annotations

import json

import pytest

from lab.results.evidence import collect
from lab.migration.integrity import check_intact, take_fingerprint
from lab.migration.measure import measure_migration, thresholds_record, verdict


def precreate_disk(guest, host) -> None:
    """Non-shared storage: the destination needs an image of the same size to copy into."""
    # -U: the running guest holds the image's lock; reading its size is safe.
    info = guest.host.run(f"qemu-img info -U --output=json {guest.config.disk}").stdout
    virtual = json.loads(info)["virtual-size"]
    host.run(f"qemu-img create -q -f qcow2 {guest.config.disk} {virtual}")


@pytest.fixture
def run_measured(lab, thresholds, repeat, host_versions, record, test_report_dir):
    """Run a scenario --repeat times (alternating direction), check integrity each time, then the verdict."""

    def run(scenario, guest):
        before = take_fingerprint(guest)
        if scenario.dirty_mibs:
            guest.agent("dirty", scenario.dirty_mibs, 64)
        limits = thresholds.for_scenario(scenario.id)
        period_ms = lab.config.guest.heartbeat_us / 1000
        count = repeat * 2 if scenario.ping_pong else repeat
        measurements, problems = [], []
        src, dst = lab.hosts[0], lab.hosts[1]
        for i in range(count):
            if scenario.storage == "local":
                precreate_disk(guest, dst)
            params = scenario.with_lab(lab, dst.address)
            m = measure_migration(scenario.id, guest, src, dst, params, period_ms,
                                  overestimate_ms=thresholds.tolerance.hypervisor_overestimate_ms)
            doc = m.record(host_versions, limits)
            doc.update(repetition=i + 1, of=count, thresholds_file=thresholds_record(thresholds))
            record(doc)
            if not m.result.ok:
                kept = collect(lab.hosts, guest.name, test_report_dir / f"migration-{i + 1}", m.result)
                pytest.fail(f"{scenario.id}: migration {i + 1} {src.name} -> {dst.name} failed: {m.result.error} "
                            f"(evidence: {len(kept)} files in {test_report_dir})")
            problems += [f"after migration {i + 1} to {dst.name}: {p}" for p in check_intact(guest, before, lab.hosts, dst)]
            measurements.append(m)
            src, dst = dst, src
        failures, summaries = verdict(scenario.id, measurements, limits)
        figures = {f"{probe}_downtime_ms_p95": round(s.p95, 1) for probe, s in summaries.items() if probe != "total_s"}
        figures.update({f"{probe}_downtime_ms_max": round(s.max, 1) for probe, s in summaries.items() if probe != "total_s"})
        figures["total_s_p95"] = round(summaries["total_s"].p95, 2)
        record({"kind": "live-migration-summary", "scenario": scenario.id, "verdict": "fail" if failures or problems else "pass",
                "failures": failures + problems, "summaries": {k: vars(v) for k, v in summaries.items()},
                "thresholds": {"downtime_ms": limits.downtime_ms, "total_s": limits.total_s}}, figures)
        return measurements, failures + problems

    return run

"""thresholds.yaml validation, the verdict's arithmetic, and an impossible threshold failing the real suite."""
import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.migration.measure import Measurement, check_invariants, verdict
from lab.migration.live import MigrationParams, MigrationResult
from lab.results.stats import Summary, percentile
from lab.config.thresholds import load_thresholds, parse_thresholds

ROOT = Path(__file__).resolve().parent.parent

BAD = {
    "unknown-probe": ({"defaults": {"downtime_ms": {"hypervisor": 1, "guest": 1, "network": 1, "wall": 1}, "total_s": 1}},
                      "defaults.downtime_ms.wall: unknown probe (allowed: hypervisor, guest, network)"),
    "negative-limit": ({"defaults": {"downtime_ms": {"hypervisor": -5, "guest": 1, "network": 1}, "total_s": 1}},
                       "defaults.downtime_ms.hypervisor: -5 is not a positive number"),
    "missing-probe": ({"defaults": {"downtime_ms": {"hypervisor": 1}, "total_s": 1}},
                      "defaults.downtime_ms: missing guest, network"),
    "scenario-typo": ({"defaults": {"downtime_ms": {"hypervisor": 1, "guest": 1, "network": 1}, "total_s": 1},
                       "scenarios": {"precopy-idle": {"downtime": 5}}},
                      "scenarios.precopy-idle.downtime: unknown key (allowed: downtime_ms, total_s)"),
    "tolerance-typo": ({"tolerance": {"bandwith_pct": 5},
                        "defaults": {"downtime_ms": {"hypervisor": 1, "guest": 1, "network": 1}, "total_s": 1}},
                       "tolerance.bandwith_pct: unknown key"),
}


@pytest.mark.parametrize("doc,expected", list(BAD.values()), ids=list(BAD))
def test_malformed_thresholds_name_the_field(doc, expected):
    with pytest.raises(ConfigError) as info:
        parse_thresholds(doc)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_shipped_thresholds_load_and_scenarios_inherit_defaults():
    t = load_thresholds()
    assert t.for_scenario("precopy-idle").downtime_ms["hypervisor"] == 600
    assert t.for_scenario("max-downtime-400ms").downtime_ms == t.defaults.downtime_ms
    assert t.for_scenario("no-such-scenario") == t.defaults


def test_percentiles_interpolate_between_ranks():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([10, 20], 95) == pytest.approx(19.5)
    s = Summary.of([5, 1, 3])
    assert (s.min, s.p50, s.max, s.n) == (1, 3, 5, 3)


def _measurement(hyp, guest, net, lost=0):
    result = MigrationResult("hv1", "hv2", MigrationParams(), 0, 1, 1.0, stats={"downtime": hyp, "time_elapsed": 900})
    hb = {"received": 100, "max_gap_ms": guest, "lost": lost, "reordered": 0, "duplicates": 0, "gap_start_ns": 0}
    return Measurement("s", result, {"hypervisor": hyp, "guest": guest, "network": net}, hb, dict(hb, max_gap_ms=net))


def test_verdict_uses_p95_and_names_scenario_probe_figure_and_limit():
    limits = parse_thresholds({"defaults": {"downtime_ms": {"hypervisor": 100, "guest": 150, "network": 150},
                                            "total_s": 5}}).defaults
    ms = [_measurement(50, 60, 70), _measurement(60, 70, 80), _measurement(300, 320, 330)]
    failures, summaries = verdict("precopy-idle", ms, limits)
    assert summaries["hypervisor"].p95 == pytest.approx(276.0)
    assert failures[0].startswith("precopy-idle: hypervisor downtime p95 276.0 ms exceeds the limit of 100 ms")
    assert len(failures) == 3


def test_invariants_catch_a_guest_gap_below_the_hypervisor_figure_and_lost_heartbeats():
    m = _measurement(200, 150, 210, lost=3)
    problems = check_invariants(m, period_ms=1, overestimate_ms=25)
    assert any("below hypervisor-reported 200 ms" in p for p in problems)
    assert any("3 heartbeat sequence numbers never arrived" in p for p in problems)
    assert check_invariants(_measurement(200, 201, 220), period_ms=1) == []
    assert check_invariants(_measurement(200, 180, 220), period_ms=1, overestimate_ms=25) == []
    assert check_invariants(_measurement(200, 180, 220), period_ms=1) != []


@pytest.mark.lab
def test_an_impossible_threshold_fails_the_live_suite_with_the_right_message(lab, tmp_path):
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text("defaults:\n  downtime_ms: {hypervisor: 1000, guest: 1000, network: 1000}\n  total_s: 60\n"
                          "scenarios:\n  precopy-idle:\n    downtime_ms: {hypervisor: 0.001}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/live_migration", "-k", "precopy-idle", "--repeat", "1", "-q",
         "--thresholds", str(impossible), "--report-dir", str(tmp_path / "report"), "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "precopy-idle: hypervisor downtime p95" in proc.stdout
    assert "exceeds the limit of 0.001 ms" in proc.stdout
    assert "1 failed" in proc.stdout

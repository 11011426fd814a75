"""Settings checks fed QEMU's figures directly (lab/migration/honoured.py), where the real break is a QEMU
build (suites/mutants/: auto-converge-threshold-percent-not-scaled, bandwidth-async-pages-not-rate-limited)
and tests/test_settings_honoured.py breaks the rest on real migrations."""
from __future__ import annotations

from lab.migration.honoured import Observed, settings_findings
from lab.migration.live import MigrationParams, MigrationResult
from lab.results.verdicts import Kind


def result(params: MigrationParams, throttle: int | None, **stats) -> MigrationResult:
    return MigrationResult("hv1", "hv2", params, 0, 1, 1.0, stats=stats, throttle_max_pct=throttle)


def test_auto_converge_that_never_throttled_is_ignored_and_one_never_polled_is_not_measured():
    asked = MigrationParams(auto_converge=True)
    ignored = settings_findings(asked, result(asked, 0, memory_iteration=9), Observed())
    assert [f.kind for f in ignored] == [Kind.SETTING_IGNORED] and "never throttled" in ignored[0].text
    unseen = settings_findings(asked, result(asked, None, memory_iteration=9), Observed())
    assert [f.kind for f in unseen] == [Kind.NOT_MEASURED]
    assert settings_findings(asked, result(asked, 60, memory_iteration=9), Observed()) == []
    assert settings_findings(asked, result(asked, 0, memory_iteration=2), Observed()) == []  # converged unthrottled


def test_a_bandwidth_cap_exceeded_on_average_is_ignored():
    capped = MigrationParams(bandwidth_mibs=16)
    fast = settings_findings(capped, result(capped, None, data_processed=400 * 2**20, time_elapsed=1000), Observed())
    assert [f.kind for f in fast] == [Kind.SETTING_IGNORED] and "400.0 MiB/s on average" in fast[0].text
    assert settings_findings(capped, result(capped, None, data_processed=30 * 2**20, time_elapsed=2000), Observed()) == []

"""Settings checks fed QEMU's figures directly (lab/migration/honoured.py), where the real break is a QEMU
build (suites/mutants/: auto-converge-threshold-percent-not-scaled, bandwidth-async-pages-not-rate-limited)
and tests/test_settings_honoured.py breaks the rest on real migrations."""
from __future__ import annotations

from lab.migration.honoured import Observed, settings_findings, statistics_findings
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


def test_transferred_bytes_below_the_full_pages_sent_is_a_wrong_statistic():
    """The real break: suites/mutants/ transferred-bytes-skip-page-payload (4 KiB a page not counted)."""
    plain = MigrationParams()
    under = statistics_findings(result(plain, None, memory_processed=2 * 2**20, memory_normal_bytes=100 * 2**20),
                                Observed())
    assert [f.kind for f in under] == [Kind.STATISTIC_WRONG] and "less than the 100.0 MiB" in under[0].text
    # Seen on every clean move: the bytes exceed the pages by their headers (e.g. 112.07 against 111.51 MB).
    assert statistics_findings(result(plain, None, memory_processed=112071766, memory_normal_bytes=111505408),
                               Observed()) == []


def test_a_dirty_rate_reported_far_from_the_guests_own_is_a_wrong_statistic():
    """The real break: suites/mutants/ dirty-rate-per-millisecond (QEMU's rate 1000 times too low)."""
    def judged(reported, iterations=6, guest=4.0, region=64, elapsed_ms=14000):
        r = result(MigrationParams(), None, memory_iteration=iterations, time_elapsed=elapsed_ms)
        r.dirty_rate_reported_mibs = reported
        return [f.kind for f in statistics_findings(r, Observed(dirty_mibs_before=guest), 4, region)]
    assert judged(0.004) == [Kind.STATISTIC_WRONG] and judged(40.0) == [Kind.STATISTIC_WRONG]
    assert judged(3.2) == [] and judged(9.0) == []
    # QEMU counts distinct pages per sync period: a guest sweeping 64 MiB at 62 MiB/s reads as 64 MiB per 4 s
    # iteration (seen: 16.1 MiB/s under auto-converge, 33 s); 1000 times too low is still caught.
    assert judged(16.1, guest=62.4, elapsed_ms=33300) == []
    assert judged(0.016, guest=62.4, elapsed_ms=33300) == [Kind.STATISTIC_WRONG]
    assert judged(None) == [Kind.NOT_MEASURED]  # six iterations, and never a live dirty rate: no pass
    assert judged(None, iterations=2) == []  # too short for QEMU to have measured one


def test_a_tunnelled_migration_whose_qemu_took_the_stream_itself_is_ignored():
    tunnelled = MigrationParams(tunnelled=True)
    direct = settings_findings(tunnelled, result(tunnelled, None), Observed(migration_connections_max=1, qemu_polls=9))
    assert [f.kind for f in direct] == [Kind.SETTING_IGNORED] and "did not go through libvirtd" in direct[0].text
    assert settings_findings(tunnelled, result(tunnelled, None), Observed(qemu_polls=9)) == []  # QEMU seen, no socket
    unseen = settings_findings(tunnelled, result(tunnelled, None), Observed(qemu_polls=0))
    assert [f.kind for f in unseen] == [Kind.NOT_MEASURED]

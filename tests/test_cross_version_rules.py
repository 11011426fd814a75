"""Cross-version rules that need no lab: the two directions of one load held to a factor of each other (the
rolling upgrade 7.2 -> 10.0.2 took 18 times its rollback and nothing said so, issue 24)."""
from __future__ import annotations

from lab.results.records import append_record
from lab.results.stats import Summary
from lab.results.verdicts import Kind
from suites.cross_version.test_cross_version import direction_findings


def _summary_record(report_dir, direction: str, total_s: list[float], guest: list[float]) -> None:
    append_record(report_dir, {"kind": "cross-version-summary", "scenario": f"cross-version-{direction}-idle",
                               "direction": direction, "summaries": {"total_s": vars(Summary.of(total_s)),
                                                                     "guest": vars(Summary.of(guest))}})


def test_directions_far_apart_in_time_are_a_finding_and_close_ones_are_not(tmp_path):
    _summary_record(tmp_path, "new-to-old", [1.5, 1.6, 1.7], [60, 70, 80])
    slow = {"total_s": Summary.of([27.6, 28.0, 27.9]), "guest": Summary.of([66, 189, 90])}
    found = direction_findings(tmp_path, "old-to-new", "idle", slow, factor=5)
    assert [f.kind for f in found] == [Kind.THRESHOLD] and "total time" in found[0].text, found
    assert "17.4 times apart" in found[0].text
    close = {"total_s": Summary.of([1.9, 2.0, 2.2]), "guest": Summary.of([66, 90, 95])}
    assert direction_findings(tmp_path, "old-to-new", "idle", close, factor=5) == []


def test_the_first_direction_to_run_has_nothing_to_compare_with(tmp_path):
    assert direction_findings(tmp_path, "old-to-new", "idle", {"total_s": Summary.of([30.0])}, factor=5) == []

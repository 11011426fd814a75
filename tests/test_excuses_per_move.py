"""A known defect excuses only the findings it explains, with its evidence from the same move, on that move's
own stacks, within its signature and its bound (issue 24). Each case feeds lab.results.verdicts.judge the
findings a run would have produced, and the shipped registry (known_defects.yaml)."""
from __future__ import annotations

import pytest

from lab.results.verdicts import Finding, Kind, Stack, at_move, judge, load_registry

OLD, NEW = Stack("7.2.22", "tcg"), Stack("10.0.2", "tcg")
LOST = Finding(Kind.LOST_PAGES, "lost writes: 1 pages, first at 0x7f0000001000 (found 4, expected 5)")
SILENT = Finding(Kind.ECHO_SILENT, "the guest agent does not answer on hv2 within 90 s of arriving")
CRASH = ("the second migration hv1 -> hv2 failed: End of file while reading data; hv1's QEMU log ends: "
         "bdrv_inactivate_recurse: Assertion `!(bs->open_flags & BDRV_O_INACTIVE)' failed.")


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_a_page_lost_in_one_move_does_not_excuse_a_silence_in_another(registry):
    findings = at_move([LOST], 1, (OLD, OLD)) + at_move([SILENT], 5, (OLD, OLD))
    verdict = judge(findings, OLD, registry)
    assert verdict.state == "fail" and "1 of 2 finding(s)" in verdict.why and "echo-silent" in verdict.why, verdict
    # The same two in one move: the defect's evidence is there, and it explains both.
    assert judge(at_move([LOST, SILENT], 3, (OLD, OLD)), OLD, registry).defect.id == "QEMU-TCG-DIRTY-BITMAP"


def test_a_signature_excuses_only_the_findings_that_carry_it(registry):
    matching = Finding(Kind.MIGRATION_FAILED, CRASH)
    other = Finding(Kind.MIGRATION_FAILED, "the third migration hv2 -> hv1 failed: operation failed: job 'migration out' "
                                           "failed: Unable to write to socket: Connection reset by peer")
    assert judge([matching], OLD, registry).defect.id == "QEMU-CANCEL-LEAVES-DISKS-INACTIVE"
    verdict = judge([matching, other], OLD, registry)
    assert verdict.state == "fail" and "1 of 2 finding(s)" in verdict.why, verdict


@pytest.mark.parametrize("silent_ms, state", [(295, "excused"), (999, "excused"), (2400, "fail")])
def test_a_by_design_excuse_has_a_bound(registry, silent_ms, state):
    seen = Finding(Kind.UNDERREPORTED, f"libvirt under-reports: the guest was silent {silent_ms} ms, libvirt reports 5 ms",
                   figure_ms=silent_ms)
    assert judge([seen], Stack("10.0.2", "tcg", "postcopy"), registry).state == state
    # A finding without its figure is never within the bound.
    assert judge([Finding(Kind.UNDERREPORTED, seen.text)], Stack("10.0.2", "tcg", "postcopy"), registry).state == "fail"


@pytest.mark.parametrize("qemu", ["8.2.50", "8.2.50+git.0123456789ab", "8.2.90", "8.2.91", "8.2.95"])
def test_a_development_tree_or_prerelease_of_the_fixed_version_is_not_excused_on_its_number(registry, qemu):
    """8.2.50 is what QEMU's master says while 9.0 is developed: the fix (merged for 9.0) may be in it, so a
    bisect over upstream commits never has a regression excused as the old defect."""
    assert Stack(qemu, "tcg").prerelease
    assert judge([LOST], Stack(qemu, "tcg"), registry).state == "fail"
    assert judge([LOST], Stack("8.2.9", "tcg"), registry).defect.id == "QEMU-TCG-DIRTY-BITMAP"


def test_a_distro_build_whose_changelog_names_the_fix_is_not_affected(registry):
    """Debian's changelog lists the upstream commits a package backports; host_versions() reads them."""
    patched = Stack.of({"qemu_version": "7.2.22", "changelog_commits": ["03bfc2188f0614", "aa8dc044772"]}, "tcg")
    assert judge([LOST], patched, registry).state == "fail"
    plain = Stack.of({"qemu_version": "7.2.22", "changelog_commits": ["aa8dc044772"]}, "tcg")
    assert judge([LOST], plain, registry).state == "excused"


def test_a_mixed_lab_judges_each_move_by_its_own_stacks(registry):
    """The dirty-bitmap defect is the source's: lost pages leaving the 7.2 host are excused, leaving the 10.0
    host for the 7.2 one they are a finding, whatever the test's first host runs."""
    assert judge(at_move([LOST], 1, (OLD, NEW)), NEW, registry).state == "excused"
    assert judge(at_move([LOST], 2, (NEW, OLD)), OLD, registry).state == "fail"

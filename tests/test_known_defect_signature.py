"""A known defect with a signature excuses only findings that carry its own words (known_defects.yaml)."""
import pytest

from lab.results.verdicts import Finding, Kind, Stack, judge, load_registry

ASSERTION = ("the second migration hv1 -> hv2 failed: End of file while reading data: : Input/output error; "
             "hv1's QEMU log ends: qemu-system-x86_64: ../../block.c:6681: bdrv_inactivate_recurse: Assertion "
             "`!(bs->open_flags & BDRV_O_INACTIVE)' failed. | 2026-11-30 12:35:10.195+0000: shutting down, reason=crashed")


def test_the_block_inactivation_crash_is_excused_before_qemu_10_with_its_upstream_fix():
    verdict = judge([Finding(Kind.MIGRATION_FAILED, ASSERTION)], Stack("7.2.22", "tcg"), load_registry())
    assert verdict.state == "excused" and verdict.defect.id == "QEMU-CANCEL-LEAVES-DISKS-INACTIVE"
    assert "8597af76153a" in verdict.why


WRITE_ABORT = ("the guest's QEMU on hv1 ended (crashed): qemu-system-x86_64: ../block/io.c:1967: "
               "bdrv_co_write_req_prepare: Assertion `!(bs->open_flags & BDRV_O_INACTIVE)' failed. | "
               "2026-12-07 12:42:27.197+0000: shutting down, reason=crashed")


def test_the_guests_next_write_aborting_qemu_is_the_same_defect_and_excuses_what_follows_from_it():
    """Seen on the cancel-leaves-disks-inactive mutant: the source got its guest back with its images inactive,
    the integrity check's disk write aborted QEMU; the write and the echo then got no answer."""
    findings = [Finding(Kind.DISK_UNWRITABLE, "the guest's disk does not take writes on hv1: agent timeout"),
                Finding(Kind.QEMU_ENDED, WRITE_ABORT)]
    verdict = judge(findings, Stack("7.2.22", "tcg"), load_registry())
    assert verdict.state == "excused" and verdict.defect.id == "QEMU-CANCEL-LEAVES-DISKS-INACTIVE", verdict


def test_an_unwritable_disk_without_qemus_assertion_is_not_excused():
    findings = [Finding(Kind.DISK_UNWRITABLE, "the guest's disk does not take writes on hv1: Input/output error"),
                Finding(Kind.QEMU_ENDED, "the guest's QEMU on hv1 ended (crashed): its log says nothing of it")]
    assert judge(findings, Stack("7.2.22", "tcg"), load_registry()).state == "fail"


@pytest.mark.parametrize("text, qemu", [
    ("the second migration hv1 -> hv2 failed: End of file while reading data: : Input/output error", "7.2.22"),
    (ASSERTION, "10.0.2"),
])
def test_a_migration_failure_without_the_signature_or_on_a_fixed_qemu_fails(text, qemu):
    assert judge([Finding(Kind.MIGRATION_FAILED, text)], Stack(qemu, "tcg"), load_registry()).state == "fail"


@pytest.mark.parametrize("entry, named", [
    ("evidence: [migration-failed], explains: [migration-failed], signature: 'a(b', bound_ms: 1", "signature"),
    ("evidence: [threshold], explains: [threshold]", "bound_ms"),  # by_design needs a bound (issue 24)
], ids=["signature-not-a-regex", "by-design-without-a-bound"])
def test_a_bad_registry_entry_is_refused(tmp_path, entry, named):
    bad = tmp_path / "defects.yaml"
    bad.write_text(f"defects:\n  - {{id: X, title: t, by_design: d, affects: {{qemu: '>=0'}}, {entry}}}\n")
    with pytest.raises(Exception, match=named):
        load_registry(bad)

"""The libcareplus driver's reading of the tools and its verdicts, tested without libcareplus, a lab
or a network: finding the tools, ELF and kpatch headers, libcare-ctl's output, and the diagnosis of
each failure, on output captured from real runs (tests/libcare_captured.py).
"""
from __future__ import annotations

import os
import sys

import pytest

from lab.errors import ConfigError, HotpatchError, MissingToolError
from lab.hotpatch.ctl_output import parse_apply, parse_dump_header, parse_info, parse_unapply
from lab.hotpatch.diagnosis import BuildIdMismatch, diagnose_apply, diagnose_build, diagnose_buildid
from lab.hotpatch.kpatch import read_kpatch_header
from lab.hotpatch.libcareplus import TOOLS, find_libcareplus, missing_reason
from lab.util.elf import build_id, text_digest
from lab.util.process import run
from suites.hotpatch.conftest import load_hotpatch_thresholds
from tests.libcare_captured import (
    CAPTURED_APPLY_MISMATCH,
    CAPTURED_APPLY_OK,
    CAPTURED_APPLY_UNSAFE,
    CAPTURED_BUILD_TOO_SMALL,
    CAPTURED_DUMP,
    CAPTURED_INFO_TWO,
    CAPTURED_UNAPPLY_OK,
    DISTRO_BUILDID,
    LIB_BUILDID,
    fake_tools,
    kpatch_bytes,
)


# -- finding libcareplus ------------------------------------------------------

def test_absent_libcareplus_gives_the_one_line_skip_reason(tmp_path):
    with pytest.raises(MissingToolError) as caught:
        find_libcareplus(path=str(tmp_path))
    message = str(caught.value)
    assert message.startswith("libcareplus not found on PATH or hotpatch.libcareplus_prefix: install it")
    assert "dnf install libcareplus" in message and "\n" not in message
    assert missing_reason(path=str(tmp_path)) == message


def test_prefix_from_lab_yaml_is_searched_and_named(tmp_path):
    with pytest.raises(MissingToolError, match=r"not found on hotpatch.libcareplus_prefix /nonexistent"):
        find_libcareplus(prefix="/nonexistent")
    fake_tools(tmp_path / "bin")
    found = find_libcareplus(prefix=str(tmp_path), path="")
    assert found.bindir == tmp_path / "bin"
    assert found.tool("libcare-ctl") == str(tmp_path / "bin" / "libcare-ctl")


def test_a_partial_install_names_the_missing_tools(tmp_path):
    fake_tools(tmp_path, [t for t in TOOLS if t != "kpatch_strip"])
    with pytest.raises(MissingToolError, match=r"incomplete on PATH: missing kpatch_strip"):
        find_libcareplus(path=str(tmp_path))


# -- ELF and kpatch headers ---------------------------------------------------

def test_elf_build_id_matches_readelf_on_a_real_binary():
    binary = "/usr/bin/qemu-system-x86_64" if os.path.exists("/usr/bin/qemu-system-x86_64") else sys.executable
    binary = os.path.realpath(binary)
    out = run(["readelf", "-n", binary], check=False).stdout
    expected = next(line.split()[-1] for line in out.splitlines() if "Build ID:" in line)
    assert build_id(binary, error=HotpatchError) == expected
    assert len(text_digest(binary, error=HotpatchError)) == 64


def test_elf_build_id_refuses_a_non_elf_file(tmp_path):
    path = tmp_path / "x"
    path.write_text("#!/bin/sh\n")
    with pytest.raises(HotpatchError, match="not an ELF file"):
        build_id(path, error=HotpatchError)


def test_kpatch_header_is_read_directly_and_from_libcare_dump_alike(tmp_path):
    path = tmp_path / f"{LIB_BUILDID}.kpatch"
    path.write_bytes(kpatch_bytes("0001", LIB_BUILDID))
    direct = read_kpatch_header(path)
    dumped = parse_dump_header(CAPTURED_DUMP, str(path))
    assert (direct.patch_id, direct.buildid) == ("0001", LIB_BUILDID)
    assert (dumped.patch_id, dumped.buildid) == ("0001", LIB_BUILDID)
    bad = tmp_path / "bad.kpatch"
    bad.write_bytes(b"ELF" + b"\0" * 400)
    with pytest.raises(HotpatchError, match="not a kpatch file"):
        read_kpatch_header(bad)
    with pytest.raises(HotpatchError, match="libcare-dump could not read"):
        parse_dump_header("Invalid kpatch file 'x'\n", "x")


# -- libcare-ctl output -------------------------------------------------------

def test_apply_output_gives_hunks_and_frozen_time():
    hunks, frozen = parse_apply(CAPTURED_APPLY_OK)
    assert hunks == 1 and frozen is not None and frozen > 0
    assert parse_apply(CAPTURED_APPLY_MISMATCH) == (None, None)


def test_info_output_lists_patch_ids_in_order():
    (entry,) = parse_info(CAPTURED_INFO_TWO)
    assert entry.buildid == LIB_BUILDID and entry.patch_ids == ("0001", "0002") and entry.count == 2
    assert entry.target.endswith("qemu-system-x86_64")
    assert parse_info("") == []


def test_unapply_output_gives_hunks_and_frozen_time():
    hunks, frozen = parse_unapply(CAPTURED_UNAPPLY_OK)
    assert hunks == 1 and frozen is not None
    assert parse_unapply("No patch(es) cancellable from PID '1' were found\n") == (None, None)


# -- diagnosis: one-line verdict + evidence -----------------------------------

def test_buildid_mismatch_verdict_names_both_ids_and_the_faq_remedy():
    found = diagnose_buildid(LIB_BUILDID, DISTRO_BUILDID, CAPTURED_APPLY_MISMATCH, "/c/x.kpatch", "/usr/bin/qemu")
    assert isinstance(found, BuildIdMismatch)
    assert found.kind == "buildid-mismatch" and "\n" not in found.verdict
    assert LIB_BUILDID in found.verdict and DISTRO_BUILDID in found.verdict
    assert "remedy: rebuild the patch against this exact QEMU binary" in found.verdict
    assert any("No patch(es) applicable" in e for e in found.evidence)
    assert diagnose_buildid(LIB_BUILDID, LIB_BUILDID) is None


def test_exit_status_zero_with_no_patch_applied_is_still_a_failure():
    # libcare-ctl exits 0 here; only the text says nothing was applied.
    found = diagnose_apply(CAPTURED_APPLY_MISMATCH)
    assert found.kind == "buildid-mismatch"


def test_safety_check_failure_is_diagnosed_as_a_function_on_a_threads_stack():
    # 0x558a2ebdd710 is qemu_main_loop in that process (load base 0x558a2e787000 + 0x456710)
    found = diagnose_apply(CAPTURED_APPLY_UNSAFE, symbolize={0x558a2ebdd710: "qemu_main_loop"}.get)
    assert found.kind == "unsafe-on-stack" and "\n" not in found.verdict
    assert "qemu_main_loop is always on a thread's stack" in found.verdict and "remedy:" in found.verdict
    assert "[0x558a2ebdd877] qemu_main_loop+0x167" in found.evidence  # the stack trace line that shows it
    assert any("safety check failed" in e for e in found.evidence)
    unnamed = diagnose_apply(CAPTURED_APPLY_UNSAFE)
    assert unnamed.kind == "unsafe-on-stack" and "0x" in unnamed.verdict


def test_function_shorter_than_5_bytes_is_diagnosed_from_the_build_log():
    names = {0x647f50: "object_property_allow_set_link"}
    found = diagnose_build(CAPTURED_BUILD_TOO_SMALL, symbolize=names.get, size_of=lambda name: 1)
    assert found.kind == "function-too-small" and "\n" not in found.verdict
    assert "object_property_allow_set_link is 1 byte long, shorter than the 5-byte jump" in found.verdict
    assert "kpatch_strip.c(95): too small function to patch at 0x647f50" in found.evidence
    assert "Failed to do stripped." in found.evidence  # joined messages are split into lines of evidence


def test_other_build_outcomes_are_told_apart():
    rejected = "applying /p/0001.patch...\npatching file monitor/x.c\nHunk #1 FAILED at 101.\n" \
               "1 out of 1 hunk FAILED -- saving rejects to file monitor/x.c.rej\n"
    assert "does not apply" in diagnose_build(rejected).verdict
    nothing = "BUILDING ORIGINAL CODE\nINSTALLING ORIGINAL OBJECTS INTO /b/lpmake\napplying /p/a.patch...\n" \
              "BUILDING PATCHED CODE\nINSTALLING PATCHED OBJECTS INTO /b/.lpmaketmp/patched\nMAKING PATCHES\n"
    assert diagnose_build(nothing).kind == "no-change"
    broken = "../monitor/qmp-cmds-control.c:104:5: error: expected ';' before 'return'\n"
    assert "the build failed" in diagnose_build(broken).verdict
    # kpatch_gensrc refusing a unit fails its compile step: libcare's own words are the verdict
    refused = "[17/678] Compiling C object libqemuutil.a.p/util_rcu.c.o\nFAILED: libqemuutil.a.p/util_rcu.c.o \n" \
              "FATAL! Variables co_tls_rcu_reader (line 929) and co_tls_rcu_reader (line 929) don't match\n"
    assert diagnose_build(refused).verdict == (
        "libcare-patch-make refused the change: FATAL! Variables co_tls_rcu_reader (line 929) and "
        "co_tls_rcu_reader (line 929) don't match")


# -- the suite's own threshold file -------------------------------------------

def test_hotpatch_thresholds_load_and_reject_bad_values(tmp_path):
    shipped = load_hotpatch_thresholds()
    assert set(shipped) == {"apply_stall_ms", "apply_frozen_ms", "unapply_stall_ms"}
    bad = tmp_path / "t.yaml"
    bad.write_text("apply_stall_ms: -1\napply_frozen_ms: 1\nunapply_stall_ms: 1\n")
    with pytest.raises(ConfigError, match=r"apply_stall_ms: -1 is not a positive number"):
        load_hotpatch_thresholds(bad)
    bad.write_text("apply_stal_ms: 1\n")
    with pytest.raises(ConfigError, match=r"apply_stal_ms: unknown key"):
        load_hotpatch_thresholds(bad)

"""The hot patch doctor against the lab's own QEMU 7.2 build: for each FAQ kind, a small
patch to QEMU's source of exactly that kind (suites/hotpatch/patches/doctor/, and the hot
patch suite's own tiny and on-stack patches), named by the doctor; a plain change
(0001-query-version-package) is not. A running QEMU of that build is asked about too
(--pid: its threads' stacks), and the distro's binary stands for another build (buildID).

The build is the project's own: the first use on a machine makes it (the installed QEMU's source, plain,
with debug info; through the compiler cache, about a minute when a stack build of the same source filled it,
about 4 without), every later one finds it in hotpatch.build_cache. With it, the module takes about a minute
(reading QEMU's unit list once, then one compilation unit per patch).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.config.hotpatch import HotpatchSpec
from lab.errors import LabError
from lab.hotpatch.doctor.doctor import diagnose
from lab.hotpatch.doctor.dwarf_facts import DebugInfo
from lab.hotpatch.qemu_build import ensure_qemu_build
from lab.util.elf import build_id
from lab.util.process import terminate

pytestmark = pytest.mark.build  # reads the plain QEMU build, made on first use
PATCHES = Path(__file__).resolve().parent.parent / "suites" / "hotpatch" / "patches"
DISTRO_QEMU = Path("/usr/bin/qemu-system-x86_64")

@pytest.fixture(scope="module")
def qemu() -> str:
    """The plain build's binary, built here on first use (one xdist worker builds, the others wait)."""
    try:
        return str(ensure_qemu_build(HotpatchSpec().build_cache, mode="plain").binary)
    except LabError as exc:
        pytest.fail(f"the QEMU build the doctor reads could not be made: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def qemu_debug(qemu):
    debug = DebugInfo(qemu)
    yield debug
    debug.close()


# (patch file, kind, detail, subject)
KIND_CASES = [
    pytest.param("doctor/inline-qmp_caps_accept.patch", "inline", "", "qmp_caps_accept", id="inline"),
    pytest.param("doctor/recursive-to_json.patch", "recursive", "", "to_json", id="recursive"),
    pytest.param("doctor/noreturn-expr_error.patch", "never-returns", "noreturn", "expr_error", id="noreturn"),
    pytest.param("doctor/infinite-loop-call_rcu_thread.patch", "never-returns", "infinite-loop", "call_rcu_thread",
                 id="infinite-loop"),
    pytest.param("doctor/infinite-loop-call_rcu_thread.patch", "never-returns", "thread-entry", "call_rcu_thread",
                 id="thread-entry"),
    pytest.param("unsafe-qemu_main_loop-on-stack.patch", "never-returns", "main-loop", "qemu_main_loop",
                 id="main-loop"),
    pytest.param("doctor/init-register_types.patch", "init-only", "", "register_types", id="init-type_init"),
    pytest.param("doctor/init-qemu_create_default_devices.patch", "init-only", "", "qemu_create_default_devices",
                 id="init-inlined-into-qemu_init"),
    pytest.param("tiny-object_property_allow_set_link.patch", "too-small", "", "object_property_allow_set_link",
                 id="shorter-than-5-bytes"),
    pytest.param("doctor/global-data-default_fmt_size.patch", "not-a-function-change", "global-data",
                 "default_fmt_size", id="global-data"),
    pytest.param("doctor/static-data-qmp_query_version.patch", "not-a-function-change", "static-data",
                 "qmp_query_version", id="static-data-new"),
    pytest.param("doctor/static-data-restore_boot_order.patch", "not-a-function-change", "static-data",
                 "restore_boot_order", id="static-data-changed"),
    pytest.param("doctor/struct-layout-rcu_drain.patch", "not-a-function-change", "struct-layout", "rcu_drain",
                 id="struct-layout"),
    pytest.param("doctor/parameters-qmp_caps_accept.patch", "not-a-function-change", "parameters",
                 "qmp_caps_accept", id="parameters-const-only"),
    pytest.param("doctor/parameters-static-qmp_caps_accept.patch", "not-a-function-change", "parameters",
                 "qmp_caps_accept", id="parameters-static"),
    pytest.param("doctor/macro-RCU_CALL_MIN_SIZE.patch", "not-a-function-change", "macro", "RCU_CALL_MIN_SIZE",
                 id="macro"),
    pytest.param("doctor/header-rcu_reader_data.patch", "not-a-function-change", "header", "include/qemu/rcu.h",
                 id="header"),
    pytest.param("doctor/line-macro-call_rcu_thread.patch", "not-a-function-change", "line-macro", "util/rcu.c",
                 id="line-macro-moves-call_rcu_thread"),
    pytest.param("doctor/line-macro-rcu_register_thread.patch", "not-a-function-change", "line-macro", "util/rcu.c",
                 id="line-macro"),
    pytest.param("tiny-object_property_allow_set_link.patch", "not-a-function-change", "line-macro", "qom/object.c",
                 id="line-macro-error_set"),
]
# Warnings, each shown to load and work by suites/hotpatch/test_doctor_outcomes.py: qmp_caps_accept's one caller is
# patched with it; to_json and expr_error are entered anew by each call; a new static lives in the patch; functions
# whose __LINE__ moved are replaced too (none of them a thread's loop).
WARNINGS = {("inline", ""), ("recursive", ""), ("never-returns", "noreturn")}
WARNING_CASES = {("doctor/static-data-qmp_query_version.patch", "static-data"),
                 ("doctor/parameters-static-qmp_caps_accept.patch", "parameters"),
                 ("doctor/line-macro-rcu_register_thread.patch", "line-macro"),
                 ("doctor/struct-layout-rcu_drain.patch", "line-macro"),
                 ("tiny-object_property_allow_set_link.patch", "line-macro")}


@pytest.mark.parametrize("patch, kind, detail, subject", KIND_CASES)
def test_doctor_names_the_kind_in_qemu(qemu, qemu_debug, patch, kind, detail, subject):
    report = diagnose(PATCHES / patch, qemu, debug=qemu_debug)
    found = [f for f in report.findings if (f.kind, f.detail, f.function) == (kind, detail, subject)]
    assert found, report.text()
    assert found[0].evidence and found[0].remedy and found[0].faq
    assert found[0].ineffective == ((kind, detail) not in WARNINGS and (patch, detail) not in WARNING_CASES)


# What libcare-patch-make's kpatch replaced (its .kpatch.strtab), in suites/hotpatch/test_doctor_outcomes.py.
RCU_LOCK_USERS = ["rcu_add_force_rcu_notifier", "rcu_init_lock", "rcu_init_unlock", "rcu_register_thread",
                  "rcu_remove_force_rcu_notifier", "rcu_unregister_thread"]


@pytest.mark.parametrize("patch, replaced", [
    pytest.param("doctor/inline-qmp_caps_accept.patch", ["qmp_qmp_capabilities"], id="inline"),
    pytest.param("doctor/parameters-static-qmp_caps_accept.patch", ["qmp_qmp_capabilities"], id="parameters-static"),
    pytest.param("doctor/macro-RCU_CALL_MIN_SIZE.patch", ["call_rcu_thread"], id="macro"),
    pytest.param("doctor/line-macro-call_rcu_thread.patch",
                 sorted(["call_rcu_thread", "drain_call_rcu", *RCU_LOCK_USERS]), id="line-macro-above-the-thread"),
    pytest.param("doctor/line-macro-rcu_register_thread.patch", RCU_LOCK_USERS, id="line-macro"),
    pytest.param("doctor/struct-layout-rcu_drain.patch", sorted(["drain_call_rcu", *RCU_LOCK_USERS]),
                 id="struct-layout-and-moved-lines"),
    # qmp_query_commands' assert() and qmp_query_qmp_schema's g_assert() move too: kpatch_gensrc matches those
    pytest.param("doctor/static-data-qmp_query_version.patch", ["qmp_query_version"], id="moved-asserts-only"),
])
def test_doctor_names_what_the_kpatch_replaced(qemu, qemu_debug, patch, replaced):
    report = diagnose(PATCHES / patch, qemu, debug=qemu_debug)
    assert report.replaced() == replaced, report.text()


def test_a_plain_change_to_qemu_has_no_finding(qemu, qemu_debug):
    report = diagnose(PATCHES / "0001-query-version-package.patch", qemu, debug=qemu_debug)
    assert [c.name for c in report.changed] == ["qmp_query_version"]
    assert report.findings == [], report.text()


@pytest.fixture
def running_qemu(qemu, tmp_path):
    """The build's QEMU running (no guest, paused, TCG): its main thread sits in qemu_main_loop."""
    proc = subprocess.Popen([qemu, "-machine", "none", "-nodefaults", "-display", "none", "-S",
                             "-monitor", "none", "-serial", "none"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    time.sleep(1.0)
    if proc.poll() is not None:
        pytest.fail(f"QEMU exited at once: {proc.stderr.read().decode(errors='replace')[-300:]}")
    yield proc
    terminate({proc.pid})
    proc.wait(timeout=10)


@pytest.mark.skipif(shutil.which("eu-stack") is None or os.geteuid() != 0,
                    reason="thread stacks need eu-stack (apt-get install elfutils / dnf install elfutils) and root")
def test_a_running_qemu_has_its_main_thread_in_qemu_main_loop(qemu, qemu_debug, running_qemu):
    report = diagnose(PATCHES / "unsafe-qemu_main_loop-on-stack.patch", qemu, pid=running_qemu.pid, debug=qemu_debug)
    on_stack = [f for f in report.findings if f.detail == "on-stack"]
    assert on_stack and on_stack[0].function == "qemu_main_loop", report.text()
    assert f"thread {running_qemu.pid} " in " ".join(on_stack[0].evidence)  # the main thread: TID = PID
    # A function no thread is in: no such finding, same process.
    other = diagnose(PATCHES / "0001-query-version-package.patch", qemu, pid=running_qemu.pid, debug=qemu_debug)
    assert not [f for f in other.findings if f.detail == "on-stack"], other.text()


@pytest.mark.skipif(not DISTRO_QEMU.exists(), reason=f"{DISTRO_QEMU} not installed (apt-get install qemu-system-x86)")
def test_the_distro_binary_is_another_build(qemu, qemu_debug):
    assert build_id(DISTRO_QEMU) != build_id(qemu)
    report = diagnose(PATCHES / "0001-query-version-package.patch", qemu, target=str(DISTRO_QEMU), debug=qemu_debug)
    assert [f.kind for f in report.findings] == ["buildid"], report.text()
    assert build_id(DISTRO_QEMU) in report.findings[0].summary
    same = diagnose(PATCHES / "0001-query-version-package.patch", qemu, target=qemu, debug=qemu_debug)
    assert same.findings == []


def test_a_patch_partly_for_another_binary_is_not_checked_never_clean(qemu, qemu_debug, tmp_path):
    """The doctor checked expr_error (a warning only) but not hw/arm/virt.c, which this x86_64 binary was not
    built from: that is no verdict (exit 3), not "no finding makes the patch ineffective" (exit 0)."""
    patch = Path(__file__).parent / "data" / "hotpatch_doctor" / "partly-another-target.patch"
    report = diagnose(patch, qemu, debug=qemu_debug)
    assert report.unchecked_files == ["hw/arm/virt.c"] and report.nothing_checked and not report.ineffective
    assert "verdict: NOT CHECKED: hw/arm/virt.c not part of this binary" in report.text()
    proc = subprocess.run([sys.executable, "-m", "lab", "hotpatch", "doctor", str(patch), "--qemu", qemu],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    clean = diagnose(PATCHES / "doctor/noreturn-expr_error.patch", qemu, debug=qemu_debug)
    assert not clean.nothing_checked  # the same change alone was checked whole

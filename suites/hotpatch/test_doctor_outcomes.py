"""What the hot patch doctor predicts, checked by building and loading the same patch for real.

Each case: the doctor's verdict on a patch to the lab's libcare build of QEMU, then the
kpatch made by libcare-patch-make and loaded with libcare-ctl into a QEMU of that build
running on this machine (no guest, no lab: `-machine none -S -qmp stdio`), and what
happened. Shown so far: inline (its caller is patched with it: works), recursive and noreturn
(entered anew by each call: work), a thread's endless loop (refused by the safety check),
initialization (loads, never runs again), data (changed variables refused at build time),
and the changes that are not function changes: a static function's parameters (its caller is
patched with it: works; a const alone changes no code: no kpatch), a header (refused at build
time), a macro and moved __LINE__ constants (the functions using them are replaced: exactly those
the doctor names, read from the kpatch; refused when one is a thread's endless loop). Without
libcareplus every test skips, saying how to get it; the doctor's own tests
(tests/test_hotpatch_doctor*.py) still run.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from lab.hotpatch.diagnosis import HotpatchFailed
from lab.hotpatch.doctor.doctor import diagnose
from lab.hotpatch.kpatch import replaced_functions
from lab.hotpatch.kpatch_cache import ensure_kpatch
from lab.hotpatch.qemu_build import ensure_qemu_build
from lab.util.process import terminate
from suites.hotpatch.conftest import PATCHES

pytestmark = [pytest.mark.slow, pytest.mark.hotpatch]
OOB = {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}
EXEC_OOB = {"exec-oob": "migrate-pause"}


class StdioQemu:
    """The target's QEMU with its QMP monitor on stdin/stdout, still negotiating capabilities (where a
    failed qmp_capabilities may be sent again and again)."""

    def __init__(self, emulator: str):
        self.proc = subprocess.Popen([emulator, "-machine", "none", "-nodefaults", "-display", "none", "-S",
                                      "-qmp", "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        greeting = json.loads(self.proc.stdout.readline())
        assert "QMP" in greeting, greeting
        self.pid = self.proc.pid

    def ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        while True:
            reply = json.loads(self.proc.stdout.readline())
            if "return" in reply or "error" in reply:
                return reply

    def close(self) -> None:
        terminate({self.pid})
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def doctor_binary(target) -> str:
    """What the doctor reads: the plain build of the same source (the libcare build has no DWARF: libcare-cc
    drops -g; GCC's code is the same with or without -g), built here if missing."""
    return str(ensure_qemu_build(target.build.dir.parent, mode="plain").binary)


@pytest.fixture
def qemu_process(target):
    qemu = StdioQemu(target.emulator)
    yield qemu
    qemu.close()


def kpatch_for(target, libcare, build_progress, patch_id: str, patch: str) -> str:
    """The kpatch of one patch; one that conftest's PATCH_SETS also has goes under the same id there (one build)."""
    return ensure_kpatch(target.build, libcare, [PATCHES / patch], patch_id, target_buildid=target.kpatch_buildid,
                         progress=build_progress).kpatch_paths[0]


def build_and_load(libcare, target, build_progress, qemu: StdioQemu, patch_id: str,
                   patch: str) -> tuple[str, list[str]]:
    """What libcareplus does with the patch ("no kpatch: KIND: why", "refused on load: KIND: why" or
    "loads (N hunk(s))") and the functions its kpatch replaces."""
    try:
        path = kpatch_for(target, libcare, build_progress, patch_id, patch)
    except HotpatchFailed as exc:
        return f"no kpatch: {exc.diagnosis.kind}: {exc.diagnosis.verdict}", []
    replaced = replaced_functions(path)
    try:
        result = libcare.apply(qemu.pid, path)
    except HotpatchFailed as exc:
        return f"refused on load: {exc.diagnosis.kind}: {exc.diagnosis.verdict}", replaced
    return f"loads ({result.hunks} hunk(s))", replaced


def unpatched_oob_answer(target) -> str:
    unpatched = StdioQemu(target.emulator)
    try:
        return oob_answer(unpatched)
    finally:
        unpatched.close()


def oob_answer(qemu: StdioQemu) -> str:
    """Negotiate with oob enabled, then run a command out of band: what QEMU says to it."""
    assert "return" in qemu.ask(OOB)
    return qemu.ask(EXEC_OOB)["error"]["desc"]


def test_inline_change_outcome(libcare, target, doctor_binary, build_progress, qemu_process, record):
    """qmp_caps_accept has no out-of-line copy (inlined into qmp_qmp_capabilities)."""
    patch = "doctor/inline-qmp_caps_accept.patch"
    report = diagnose(PATCHES / patch, doctor_binary)
    assert "inline" in report.kinds(), report.text()
    before = unpatched_oob_answer(target)
    assert before.startswith("migrate-pause is currently only supported")  # oob on: the command itself ran
    path = kpatch_for(target, libcare, build_progress, "dinl", patch)
    assert replaced_functions(path) == report.replaced() == ["qmp_qmp_capabilities"], report.replaced()
    result = libcare.apply(qemu_process.pid, path)
    after = oob_answer(qemu_process)
    record({"kind": "hotpatch-doctor-outcome", "case": "inline", "doctor": sorted(report.kinds()),
            "applied_hunks": result.hunks, "before": before, "after": after})
    # libcareplus compares the assembly of every function: the caller carrying the inlined copy
    # (qmp_qmp_capabilities) changed too, so it is in the kpatch, and the change takes effect.
    assert result.hunks >= 1
    assert after == "QMP input member 'exec-oob' is unexpected", f"{result.hunks} hunk(s) loaded; QMP says {after!r}"


def test_thread_loop_change_is_refused_by_the_safety_check(libcare, target, doctor_binary, build_progress, qemu_process, record):
    """call_rcu_thread: the doctor says a thread lives in it; libcare-ctl's safety check finds it there."""
    patch = "doctor/infinite-loop-call_rcu_thread.patch"
    report = diagnose(PATCHES / patch, doctor_binary, pid=qemu_process.pid)
    details = {f.detail for f in report.findings}
    assert {"infinite-loop", "thread-entry", "on-stack"} <= details, report.text()
    path = kpatch_for(target, libcare, build_progress, "drcu", patch)
    with pytest.raises(HotpatchFailed) as caught:
        libcare.apply(qemu_process.pid, path)
    diagnosis = caught.value.diagnosis
    record({"kind": "hotpatch-doctor-outcome", "case": "thread-loop", "doctor": sorted(details),
            "diagnosis": diagnosis.kind, "verdict": diagnosis.verdict})
    assert diagnosis.kind == "unsafe-on-stack", diagnosis.report()
    assert "call_rcu_thread" in diagnosis.verdict
    assert libcare.info(qemu_process.pid) == []
    assert "return" in qemu_process.ask(OOB)  # alive and answering


def test_init_change_loads_and_changes_nothing(libcare, target, doctor_binary, build_progress, qemu_process, record):
    """register_types ran at start-up (type_init): the patch loads, and nothing calls the new code again."""
    patch = "doctor/init-register_types.patch"
    report = diagnose(PATCHES / patch, doctor_binary, pid=qemu_process.pid)
    assert "init-only" in report.kinds() and "on-stack" not in {f.detail for f in report.findings}, report.text()
    result = libcare.apply(qemu_process.pid, kpatch_for(target, libcare, build_progress, "dinit", patch))
    assert result.hunks >= 1
    applied = libcare.info(qemu_process.pid)
    record({"kind": "hotpatch-doctor-outcome", "case": "init", "doctor": sorted(report.kinds()),
            "applied_hunks": result.hunks, "applied": [list(a.patch_ids) for a in applied]})
    assert [a.patch_ids for a in applied] == [("dinit",)]
    time.sleep(0.5)
    assert qemu_process.proc.poll() is None


def test_recursive_change_outcome(libcare, target, doctor_binary, build_progress, qemu_process, record):
    """to_json calls itself; QMP is idle while the patch loads, so no call of it is in progress."""
    patch = "doctor/recursive-to_json.patch"
    report = diagnose(PATCHES / patch, doctor_binary, pid=qemu_process.pid)
    assert "recursive" in report.kinds() and "on-stack" not in {f.detail for f in report.findings}, report.text()
    assert "return" in qemu_process.ask({"execute": "qmp_capabilities"})
    before = qemu_process.ask({"execute": "query-memory-size-summary"})["return"]["base-memory"]
    result = libcare.apply(qemu_process.pid, kpatch_for(target, libcare, build_progress, "drec", patch))
    after = qemu_process.ask({"execute": "query-memory-size-summary"})["return"]["base-memory"]
    record({"kind": "hotpatch-doctor-outcome", "case": "recursive", "doctor": sorted(report.kinds()),
            "applied_hunks": result.hunks, "before": before, "after": after})
    assert (before, after) == (0, 1), f"{result.hunks} hunk(s) loaded; base-memory {before} -> {after}"


def test_noreturn_change_outcome(libcare, target, doctor_binary, build_progress, qemu_process, record):
    """expr_error never returns (it siglongjmps back to HMP's parser), but it is entered anew on every error."""
    patch = "doctor/noreturn-expr_error.patch"
    report = diagnose(PATCHES / patch, doctor_binary, pid=qemu_process.pid)
    assert "noreturn" in {f.detail for f in report.findings}, report.text()
    assert "return" in qemu_process.ask({"execute": "qmp_capabilities"})
    hmp = {"execute": "human-monitor-command", "arguments": {"command-line": "print 1+"}}
    before = qemu_process.ask(hmp)["return"]
    result = libcare.apply(qemu_process.pid, kpatch_for(target, libcare, build_progress, "dnor", patch))
    after = qemu_process.ask(hmp)["return"]
    record({"kind": "hotpatch-doctor-outcome", "case": "noreturn", "doctor": sorted(report.kinds()),
            "applied_hunks": result.hunks, "before": before, "after": after})
    assert before.startswith("unexpected end of expression\r\n")
    assert after.startswith("unexpected end of expression (in an expression)\r\n"), after


def test_main_loop_change_is_refused_by_the_safety_check(libcare, target, doctor_binary, build_progress, qemu_process,
                                                         record):
    """qemu_main_loop: the doctor finds main()'s loop, and the main thread in it; libcare-ctl refuses."""
    patch = "unsafe-qemu_main_loop-on-stack.patch"
    report = diagnose(PATCHES / patch, doctor_binary, pid=qemu_process.pid)
    assert {"main-loop", "on-stack"} <= {f.detail for f in report.findings}, report.text()
    with pytest.raises(HotpatchFailed) as caught:
        libcare.apply(qemu_process.pid, kpatch_for(target, libcare, build_progress, "stack", patch))
    diagnosis = caught.value.diagnosis
    record({"kind": "hotpatch-doctor-outcome", "case": "main-loop", "diagnosis": diagnosis.kind})
    assert diagnosis.kind == "unsafe-on-stack" and "qemu_main_loop" in diagnosis.verdict, diagnosis.report()
    assert libcare.info(qemu_process.pid) == []


def test_too_small_change_is_refused_at_build_time(libcare, target, doctor_binary, build_progress, record):
    patch = "tiny-object_property_allow_set_link.patch"
    report = diagnose(PATCHES / patch, doctor_binary)
    assert "too-small" in report.kinds(), report.text()
    with pytest.raises(HotpatchFailed) as caught:
        kpatch_for(target, libcare, build_progress, "tiny", patch)
    record({"kind": "hotpatch-doctor-outcome", "case": "too-small", "diagnosis": caught.value.diagnosis.kind})
    assert caught.value.diagnosis.kind == "function-too-small", caught.value.diagnosis.report()


def test_a_built_kpatch_is_checked_for_its_buildid(libcare, target, doctor_binary, build_progress, record):
    """A .kpatch file: its header's buildID against --qemu's (the libcare build it is for, then another)."""
    path = kpatch_for(target, libcare, build_progress, "dinit", "doctor/init-register_types.patch")
    assert diagnose(path, target.build.binary).findings == []
    other = diagnose(path, doctor_binary)
    record({"kind": "hotpatch-doctor-outcome", "case": "kpatch-buildid", "findings": sorted(other.kinds())})
    assert [f.kind for f in other.findings] == ["buildid"], other.text()
    assert target.buildid in other.findings[0].summary


@pytest.mark.parametrize("patch_id, patch, detail, outcome", [
    pytest.param("dglob", "doctor/global-data-default_fmt_size.patch", "global-data", "no kpatch", id="global-data"),
    pytest.param("dstch", "doctor/static-data-restore_boot_order.patch", "static-data", "no kpatch",
                 id="static-data-changed"),
    pytest.param("dstat", "doctor/static-data-qmp_query_version.patch", "static-data", "loads", id="static-data-new"),
    pytest.param("dstru", "doctor/struct-layout-rcu_drain.patch", "struct-layout", "loads", id="struct-layout"),
])
def test_data_change_outcome(libcare, target, doctor_binary, build_progress, qemu_process, record, patch_id, patch,
                             detail, outcome):
    """libcare-patch-make refuses a changed variable ("FATAL! Variables X and X don't match", "FATAL! Variable
    first.5 was removed or changed?"); a new static and a
    struct only ever on a patched function's stack load. The doctor fails the changed ones and the struct
    (it cannot see where live objects of the old layout are), and only warns of the new static."""
    report = diagnose(PATCHES / patch, doctor_binary)
    finding = next(f for f in report.findings if f.detail == detail)
    seen, replaced = build_and_load(libcare, target, build_progress, qemu_process, patch_id, patch)
    record({"kind": "hotpatch-doctor-outcome", "case": detail, "doctor_ineffective": finding.ineffective,
            "outcome": seen, "replaced": replaced, "doctor_replaced": report.replaced()})
    assert seen.startswith(outcome), seen
    if replaced:  # the struct's user and the functions whose __LINE__ moved; assert() users are not among them
        assert sorted(replaced) == report.replaced(), (replaced, report.text())
    if outcome == "no kpatch":
        assert finding.ineffective and "FATAL! Variable" in seen, seen
    assert "return" in qemu_process.ask({"execute": "qmp_capabilities"})  # QEMU still answers


def test_static_parameters_change_outcome(libcare, target, doctor_binary, build_progress, qemu_process, record):
    """qmp_caps_accept gains a parameter; its one caller, in the same file, carries its inlined copy and passes
    the new argument: libcare-patch-make replaces that caller, and the change takes effect, as the doctor's
    warning says."""
    patch = "doctor/parameters-static-qmp_caps_accept.patch"
    report = diagnose(PATCHES / patch, doctor_binary, pid=qemu_process.pid)
    finding = next(f for f in report.findings if f.detail == "parameters")
    before = unpatched_oob_answer(target)
    seen, replaced = build_and_load(libcare, target, build_progress, qemu_process, "dpsta", patch)
    after = oob_answer(qemu_process)
    record({"kind": "hotpatch-doctor-outcome", "case": "parameters-static", "doctor_ineffective": finding.ineffective,
            "doctor_replaced": report.replaced(), "outcome": seen, "replaced": replaced, "before": before,
            "after": after})
    assert seen.startswith("loads") and not finding.ineffective, (seen, report.text())
    assert replaced == report.replaced() == ["qmp_qmp_capabilities"], (replaced, report.text())
    assert before.startswith("migrate-pause is currently only supported")
    assert after == "QMP input member 'exec-oob' is unexpected", after


# test id: (kpatch id, patch, the doctor's finding, what libcareplus does: the start of build_and_load's answer)
NOT_A_FUNCTION_CHANGE = {
    "parameters-const-only": ("dpar", "doctor/parameters-qmp_caps_accept.patch", "parameters",
                              "no kpatch: no-change"),
    "header-struct-in-thread-local": (
        "dhdr", "doctor/header-rcu_reader_data.patch", "header",
        "no kpatch: failed: libcare-patch-make refused the change: FATAL! Variables co_tls_rcu_reader"),
    "macro-used-by-call_rcu_thread": ("dmac", "doctor/macro-RCU_CALL_MIN_SIZE.patch", "macro",
                                      "refused on load: unsafe-on-stack"),
    "line-macro-moves-call_rcu_thread": ("dlnt", "doctor/line-macro-call_rcu_thread.patch", "line-macro",
                                         "refused on load: unsafe-on-stack"),
    "line-macro-moves-rcu_register_thread": ("dlnr", "doctor/line-macro-rcu_register_thread.patch", "line-macro",
                                             "loads"),
}


@pytest.mark.parametrize("patch_id, patch, detail, outcome", list(NOT_A_FUNCTION_CHANGE.values()),
                         ids=list(NOT_A_FUNCTION_CHANGE))
def test_not_a_function_change_outcome(libcare, target, doctor_binary, build_progress, qemu_process, record,
                                       patch_id, patch, detail, outcome):
    """A const added to a parameter changes no code (no kpatch); a member added to the struct of the thread-local
    rcu_reader changes a variable (kpatch_gensrc refuses it); RCU_CALL_MIN_SIZE is used only by call_rcu_thread,
    and a comment line above call_rcu_thread moves the __LINE__ its qemu_mutex_lock_iothread() passes: both
    replace it, and the safety check finds the call_rcu thread in it; the same line further down moves only
    functions no thread lives in: it loads, and nothing changes (an iothread added afterwards registers with RCU
    through the replaced rcu_register_thread). The doctor names exactly what the kpatch replaces."""
    report = diagnose(PATCHES / patch, doctor_binary, pid=qemu_process.pid)
    finding = next(f for f in report.findings if f.detail == detail)
    seen, replaced = build_and_load(libcare, target, build_progress, qemu_process, patch_id, patch)
    record({"kind": "hotpatch-doctor-outcome", "case": detail, "patch": patch,
            "doctor_ineffective": finding.ineffective,
            "doctor_replaced": report.replaced(), "outcome": seen, "replaced": replaced})
    assert seen.startswith(outcome), seen
    assert finding.ineffective == (not outcome.startswith("loads")), report.text()
    if replaced:
        assert sorted(replaced) == report.replaced(), (replaced, report.text())
    assert "return" in qemu_process.ask({"execute": "qmp_capabilities"})  # QEMU still answers
    if "unsafe-on-stack" in outcome:
        assert "call_rcu_thread" in seen and libcare.info(qemu_process.pid) == []
        assert ("on-stack", "call_rcu_thread") in {(f.detail, f.function) for f in report.findings}, report.text()
    if outcome.startswith("loads"):
        assert [a.patch_ids for a in libcare.info(qemu_process.pid)] == [(patch_id,)]
        iothread = {"qom-type": "iothread", "id": "doctor-io"}
        assert "return" in qemu_process.ask({"execute": "object-add", "arguments": iothread})
        assert [t["id"] for t in qemu_process.ask({"execute": "query-iothreads"})["return"]] == ["doctor-io"]
        assert "return" in qemu_process.ask({"execute": "object-del", "arguments": {"id": "doctor-io"}})

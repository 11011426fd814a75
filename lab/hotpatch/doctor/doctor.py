"""The hot patch doctor: a patch and the QEMU it is for in, a DoctorReport out. A source patch
is read against the target's DWARF and machine code, function by function; a .kpatch file
(already built) can only be checked for its buildID.
"""
from __future__ import annotations

import os

from elftools.elf.elffile import ELFFile

from lab.errors import HotpatchError
from lab.hotpatch.doctor.code_checks import (blocking_findings, caller_findings, callers_in_unit, changed_function,
                                             inline_finding, init_finding, locate, never_returns_findings,
                                             recursion_finding, too_small_finding)
from lab.hotpatch.doctor.dwarf_facts import DebugInfo
from lab.hotpatch.doctor.findings import DoctorReport
from lab.hotpatch.doctor.machine_code import MachineCode
from lab.hotpatch.doctor.patch_file import read_patch
from lab.hotpatch.doctor.running import buildid_findings, on_stack_findings, thread_stacks
from lab.hotpatch.doctor.source_checks import source_view
from lab.util.elf import build_id, function_symbols

KPATCH_SUFFIX = ".kpatch"


def diagnose(patch: str | os.PathLike, binary: str | os.PathLike, *, target: str | None = None,
             pid: int | None = None, debug: DebugInfo | None = None) -> DoctorReport:
    """Every finding for `patch` (a unified diff, or a .kpatch file) against the QEMU `binary` it is built for.

    target: the binary that will be patched, when not `binary` itself (e.g. /usr/libexec/qemu-kvm);
    pid: a running QEMU, whose executable's buildID and thread stacks are checked too;
    debug: `binary`'s DebugInfo, already open (reading QEMU's unit list takes seconds; callers doing many
    patches share one), left open.
    """
    patch, binary = str(patch), str(binary)
    if not os.path.exists(binary):
        raise HotpatchError(f"{binary}: no such QEMU binary; give --qemu a binary or a build directory")
    if patch.endswith(KPATCH_SUFFIX):
        if not os.path.exists(patch):
            raise HotpatchError(f"{patch}: no such kpatch file")
        report = DoctorReport(patch, binary, build_id(binary, error=HotpatchError), source_patch=False)
        report.findings += buildid_findings(report.buildid, binary, kpatch=patch, target=target, pid=pid)
        report.notes.append("a .kpatch file: only its buildID is checked; give the source patch for every other kind")
        return report
    changes = read_patch(patch)
    owned = debug is None
    debug = debug or DebugInfo(binary)
    try:
        report = DoctorReport(patch, binary, debug.buildid)
        report.unchecked_files = [c.path for c in changes if not c.is_header and not debug.units_for(c.path)]
        view = source_view(changes, debug)
        report.findings += view.findings
        report.notes += view.notes
        symbols = function_symbols(debug.path, error=HotpatchError) or function_symbols(binary, error=HotpatchError)
        with open(binary, "rb") as fh:
            units = [unit for _fn, _c, unit in view.functions] + [dep.unit for dep in view.dependents]
            noreturn = {f.name for unit in units for f in unit.functions if f.noreturn}
            code = MachineCode(ELFFile(fh), symbols, noreturn)
            for facts, change, unit in sorted(view.functions, key=lambda item: item[0].decl_line):
                located = locate(facts, symbols)
                report.changed.append(changed_function(located, change.path))
                inline = inline_finding(located, caller_findings(located, unit, code, symbols))
                for finding in (too_small_finding(located), inline,
                                recursion_finding(located, code, symbols),
                                *never_returns_findings(located, code, unit, symbols),
                                init_finding(located, code, unit, symbols)):
                    if finding is not None:
                        report.findings.append(finding)
            for dep in view.dependents:  # replaced along with the change: macro users, moved __LINE__ users, callers
                names = dep.names + [c for c in (callers_in_unit(dep.callers_of, dep.unit, code, symbols)
                                                 if dep.callers_of else []) if c not in dep.names]
                facts = [dep.unit.function(name) for name in names]  # one with no out-of-line copy is not replaced
                dep.finding.replaced_too = [n for n, f in zip(names, facts) if f and locate(f, symbols).address]
                blocking = blocking_findings(names, dep.unit, code, symbols, behaviour=dep.behaviour)
                if blocking:
                    dep.finding.blocked_by(blocking)
        if pid is not None:  # the callers carrying an inlined copy, and the other dependents, are replaced too
            names = [c.name for c in report.changed] + [n for n in report.replaced()
                                                        if n not in {c.name for c in report.changed}]
            report.findings += on_stack_findings(names, pid, thread_stacks(pid))
        report.findings += buildid_findings(report.buildid, binary, target=target, pid=pid)
        if not report.changed and not report.findings:
            report.notes.append("the patch changes no function body of this binary")
        return report
    finally:
        if owned:
            debug.close()

"""Why a hot patch failed, from libcareplus's output text: a one-line verdict, the lines
of evidence behind it and the remedy (`Diagnosis`), for the FAQ's two classic failures,
a patch that cannot be loaded (buildID mismatch) and one that cannot take effect (the
function is always on a thread's stack, or shorter than the 5-byte jump), and for the
plainer ones (a patch that does not apply, a change kpatch_gensrc refuses with FATAL!, a
failed compile, no change). `HotpatchFailed` carries the diagnosis to the caller.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from lab.errors import HotpatchError

MIN_PATCHABLE_BYTES = 5  # an x86 `jmp rel32`
BUILDID_REMEDY = ("rebuild the patch against this exact QEMU binary (libcare-patch-make from the same source and "
                  "build environment, or --buildid of the installed binary when it was built in a matching "
                  "environment), or run the guest on the binary the patch was built for")
STACK_REMEDY = ("a function that never returns (a loop a thread lives in) cannot be patched in place: patch the "
                "functions it calls instead")
SMALL_REMEDY = "patch its callers instead (or make the change in a larger function)"
NOT_APPLICABLE = "No patch(es) applicable"  # libcare-ctl's words when no object has the patch's buildID

Symbolizer = Callable[[int], str]  # address -> function name ("" when unknown)


@dataclass(frozen=True)
class Diagnosis:
    """A one-line verdict and the lines of evidence behind it."""
    kind: str  # buildid-mismatch | unsafe-on-stack | function-too-small | no-change | failed
    verdict: str
    evidence: tuple[str, ...] = ()
    remedy: str = ""

    def __str__(self) -> str:
        return self.verdict

    def report(self) -> str:
        lines = [self.verdict] + [f"  evidence: {e}" for e in self.evidence]
        return "\n".join(lines)


@dataclass(frozen=True)
class BuildIdMismatch(Diagnosis):
    patch_buildid: str = ""
    binary_buildid: str = ""


class HotpatchFailed(HotpatchError):
    """A build, apply or unapply that did not do what was asked; `.diagnosis` says why."""

    def __init__(self, diagnosis: Diagnosis):
        super().__init__(diagnosis.verdict)
        self.diagnosis = diagnosis


def diagnose_buildid(patch_buildid: str, binary_buildid: str, output: str = "", kpatch: str = "",
                     binary: str = "") -> BuildIdMismatch | None:
    """A mismatch verdict when the kpatch's buildID is not the binary's (None when they match)."""
    if patch_buildid == binary_buildid:
        return None
    evidence = [f"kpatch {kpatch or '?'} header buildID {patch_buildid}",
                f"binary {binary or '?'} NT_GNU_BUILD_ID {binary_buildid}"]
    evidence += [ln.strip() for ln in output.splitlines() if NOT_APPLICABLE in ln]
    return BuildIdMismatch(
        kind="buildid-mismatch",
        verdict=(f"cannot load: buildID mismatch (patch built for {patch_buildid}, QEMU is {binary_buildid}); "
                 f"remedy: {BUILDID_REMEDY}"),
        evidence=tuple(evidence), remedy=BUILDID_REMEDY, patch_buildid=patch_buildid, binary_buildid=binary_buildid)


_SAFETY = re.compile(r"safety check failed (?:for|to) (?:0x)?([0-9a-f]+)")
_TOO_SMALL = re.compile(r"too small function to patch at (?:0x)?([0-9a-f]+)")


def _lines(text: str) -> list[str]:
    """libcareplus prints some messages without a newline: split them so each is a line of evidence."""
    text = re.sub(r"(?<=\S)(?=kpatch_\w+\.c\(\d+\): )", "\n", text)
    text = re.sub(r"(?<=\S)(?=(Failed to do |Failed to make patch|Finished ptrace detaching|PID '\d+' process))",
                  "\n", text)
    return [ln.rstrip() for ln in text.splitlines()]


def diagnose_apply(output: str, symbolize: Symbolizer | None = None) -> Diagnosis:
    """Why `libcare-ctl patch` applied nothing (output text only)."""
    lines = _lines(output)
    safety = [ln for ln in lines if _SAFETY.search(ln)]
    if safety:
        addr = int(_SAFETY.search(safety[0]).group(1), 16)
        func = (symbolize(addr) if symbolize else "") or f"0x{addr:x}"
        stack = _stack_lines(lines, func)
        evidence = tuple(dict.fromkeys(safety + stack + [ln for ln in lines if "Failed to apply patch" in ln]))
        return Diagnosis("unsafe-on-stack",
                         f"loaded but cannot take effect: {func} is always on a thread's stack (libcareplus's safety "
                         f"check failed: the thread never left it); remedy: {STACK_REMEDY}", evidence, STACK_REMEDY)
    if any(NOT_APPLICABLE in ln for ln in lines):
        return Diagnosis("buildid-mismatch",
                         f"cannot load: no object in the process has the patch's buildID; remedy: {BUILDID_REMEDY}",
                         tuple(ln for ln in lines if NOT_APPLICABLE in ln), BUILDID_REMEDY)
    errs = [ln for ln in lines if re.search(r"error|fail|can't|cannot", ln, re.I)]
    last = errs[-1] if errs else (next((ln for ln in reversed(lines) if ln.strip()), "no output"))
    return Diagnosis("failed", f"libcare-ctl patch failed: {last.strip()}", tuple(errs[-5:]))


def _stack_lines(lines: list[str], func: str) -> list[str]:
    """The stack-trace lines libcare-ctl printed that name the offending function."""
    name = func.split("+", 1)[0].split(" ", 1)[0]
    return [ln.strip() for ln in lines if name and name in ln and "safety check" not in ln][:3]


def diagnose_build(log_text: str, symbolize: Symbolizer | None = None,
                   size_of: Callable[[str], int | None] | None = None) -> Diagnosis:
    """Why libcare-patch-make produced no kpatch (its log text)."""
    lines = _lines(log_text)
    small = [ln for ln in lines if _TOO_SMALL.search(ln)]
    if small:
        funcs = []
        for ln in small:
            addr = int(_TOO_SMALL.search(ln).group(1), 16)
            name = (symbolize(addr) if symbolize else "") or f"0x{addr:x}"
            size = size_of(name) if size_of and not name.startswith("0x") else None
            if size is not None:
                funcs.append(f"{name} is {size} byte{'s' if size != 1 else ''} long")
            else:
                funcs.append(name)
        evidence = tuple(dict.fromkeys(small + [ln for ln in lines if re.search(
            r"Functions is too small to patch|Failed to do stripped|Failed to process kpatch info", ln)]))
        return Diagnosis("function-too-small",
                         f"refused at build time: {', '.join(funcs)}, shorter than the {MIN_PATCHABLE_BYTES}-byte "
                         f"jump libcareplus writes at a function's entry; remedy: {SMALL_REMEDY}", evidence,
                         SMALL_REMEDY)
    applied = [ln for ln in lines if ln.startswith("applying ")]
    rejected = [ln for ln in lines if re.search(r"FAILED -- saving rejects|Reversed \(or previously applied\)|"
                                                r"can't find file to patch", ln)]
    if rejected:
        return Diagnosis("failed", f"the patch does not apply to this source: {rejected[0].strip()}",
                         tuple(applied + rejected))
    fatal = [ln.strip() for ln in lines if ln.startswith("FATAL!")]  # kpatch_gensrc refusing a unit
    if fatal:
        return Diagnosis("failed", f"libcare-patch-make refused the change: {fatal[0]}",
                         tuple(dict.fromkeys(fatal)))
    compile_err = [ln for ln in lines if re.search(r"error:|\*\*\* \[|FAILED: ", ln)]
    if compile_err:
        return Diagnosis("failed", f"the build failed: {compile_err[0].strip()}", tuple(compile_err[:5]))
    tail = [ln for ln in lines if re.search(r"Failed|fatal|error", ln, re.I)]
    if tail:
        return Diagnosis("failed", f"libcare-patch-make made no kpatch: {tail[-1].strip()}", tuple(tail[-5:]))
    return Diagnosis("no-change", "libcare-patch-make made no kpatch: the patch changed no function that ends up in "
                     "the binary (nothing to patch); check that it touches code compiled into it",
                     tuple(applied))


def failed(summary: str, output: str) -> Diagnosis:
    """A plain failure: `summary: <last output line>`, the last five output lines as evidence."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return Diagnosis("failed", f"{summary}: {lines[-1] if lines else 'no output'}", tuple(lines[-5:]))

"""The target as it runs: buildIDs (a kpatch's, the build's, the binary to be patched, a
running process's executable) and, for a running QEMU, which threads are inside a changed
function now.

Thread stacks come from elfutils' `eu-stack -p PID`: it unwinds every thread with the
binary's DWARF call frame information through ptrace, which is what libcare-ctl's safety
check does (libunwind-ptrace), and costs a stop of a few milliseconds. /proc/PID/task/*/stat
and /proc/PID/task/*/syscall give only the innermost instruction pointer, a libc wrapper for
a thread that waits, never the QEMU function below it. Coroutine stacks are not threads and
are not seen (libcare-ctl finds them only for CentOS 7's QEMU either).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

from lab.errors import HotpatchError
from lab.hotpatch.doctor.findings import Finding
from lab.hotpatch.kpatch import read_kpatch_header
from lab.util.elf import build_id
from lab.util.process import run

_THREAD = re.compile(r"^TID (\d+):")
_FRAME = re.compile(r"^#(\d+)\s+0x([0-9a-f]+)\s+(?:- \d+\s+)?(\S+)")


@dataclass(frozen=True)
class Frame:
    thread: int
    depth: int
    pc: int
    function: str


def base_name(symbol: str) -> str:
    """foo.isra.0 / foo.constprop.1 / foo.cold -> foo."""
    return symbol.split(".", 1)[0]


def thread_stacks(pid: int) -> list[Frame]:
    """Every frame of every thread of `pid`, as eu-stack unwinds them (HotpatchError when it cannot)."""
    if shutil.which("eu-stack") is None:
        raise HotpatchError("eu-stack not found: the stacks of a running QEMU need elfutils "
                            "(apt-get install elfutils / dnf install elfutils); or drop --pid")
    proc = run(["eu-stack", "-p", str(pid)], check=False, timeout=60, error=HotpatchError)
    frames = []
    thread = 0
    for line in proc.stdout.splitlines():
        line = line.strip()
        if match := _THREAD.match(line):
            thread = int(match[1])
        elif match := _FRAME.match(line):
            frames.append(Frame(thread, int(match[1]), int(match[2], 16), match[3]))
    if not frames:
        why = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise HotpatchError(f"eu-stack -p {pid} showed no thread stack ({why[0]}): is {pid} a running "
                            "process you may ptrace (root)?")
    return frames


def on_stack_findings(functions: list[str], pid: int, frames: list[Frame]) -> list[Finding]:
    out = []
    for name in functions:
        hits = [f for f in frames if base_name(f.function) == name]
        if not hits:
            continue
        threads = sorted({f.thread for f in hits})
        out.append(Finding(
            "never-returns", name, f"{name} is on the stack of {len(threads)} thread(s) of PID {pid} now: "
            "libcare-ctl's safety check will refuse the patch (or, after its 3 s wait, still find it there)",
            [f"thread {f.thread} frame #{f.depth} pc 0x{f.pc:x} {f.function}" for f in hits[:8]],
            detail="on-stack"))
    return out


def process_binary(pid: int) -> str:
    path = f"/proc/{pid}/exe"
    try:
        build_id(path, error=HotpatchError)
    except HotpatchError:
        raise HotpatchError(f"PID {pid}: no such process, or its executable cannot be read (run as root)") from None
    return path


def buildid_findings(build_buildid: str, build_binary: str, *, kpatch: str | None = None,
                     target: str | None = None, pid: int | None = None) -> list[Finding]:
    """A kpatch's buildID, the binary to patch's and a running process's, each against the build's."""
    out = []
    if kpatch:
        header = read_kpatch_header(kpatch)
        if header.buildid != build_buildid:
            out.append(Finding(
                "buildid", header.patch_id, f"{kpatch} (patch {header.patch_id}) is for buildID {header.buildid}, "
                f"{build_binary} has {build_buildid}: libcare-ctl will say `No patch(es) applicable`",
                [f"kpatch header buildID {header.buildid}", f"NT_GNU_BUILD_ID of {build_binary}: {build_buildid}"]))
    others = ([("target binary " + target, target)] if target else []) + \
             ([(f"PID {pid}'s executable", process_binary(pid))] if pid else [])
    for label, path in others:
        theirs = build_id(path, error=HotpatchError)
        if theirs != build_buildid:
            out.append(Finding(
                "buildid", label, f"{label} has buildID {theirs}, the build the patch is made against has "
                f"{build_buildid}: a patch built there will not load",
                [f"NT_GNU_BUILD_ID of {path}: {theirs}", f"NT_GNU_BUILD_ID of {build_binary}: {build_buildid}"]))
    return out

"""libcareplus driver: build, inspect, apply, query and take back QEMU hot patches.

Every result is judged from libcareplus's output text and the files it makes,
never from exit codes: `libcare-patch-make` exits 0 when it made no patch, and
`libcare-ctl` exits 0 on "No patch(es) applicable" (a buildID mismatch).

Failures are diagnosed into a one-line verdict plus the evidence that backs it
(`Diagnosis`), for the two classic failures of the FAQ: a patch that cannot be
loaded (buildID mismatch) and one that cannot take effect (the function is always
on a thread's stack, or shorter than the 5-byte jump).

`libcare-patch-make` swaps the machine's `cc` for `libcare-cc` while it runs and
does not put it back on every path; `cc_guard` does, whatever happens.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from lab.errors import HotpatchError, MissingToolError
from lab.util.locks import file_lock

Progress = Callable[[str], None]

TOOLS = ("libcare-ctl", "libcare-patch-make", "libcare-dump", "libcare-cc", "kpatch_gensrc", "kpatch_strip",
         "kpatch_make")
INSTALL_HINT = "install it (openEuler: dnf install libcareplus; elsewhere build it from its source and put it on PATH)"
# What `cc` resolves to on a Debian/openEuler host: the PATH entry and the alternatives link behind it.
CC_LINKS = (Path("/usr/bin/cc"), Path("/etc/alternatives/cc"))
CC_SWAP_LOCK = Path("/run/lock/kvm-acceptance-libcare-cc.lock")
MIN_PATCHABLE_BYTES = 5  # an x86 `jmp rel32`
BUILDID_REMEDY = ("rebuild the patch against this exact QEMU binary (libcare-patch-make from the same source and "
                  "build environment, or --buildid of the installed binary when it was built in a matching "
                  "environment), or run the guest on the binary the patch was built for")
STACK_REMEDY = ("a function that never returns (a loop a thread lives in) cannot be patched in place: patch the "
                "functions it calls instead")
SMALL_REMEDY = "patch its callers instead (or make the change in a larger function)"


def _quiet(_msg: str) -> None:
    pass


# -- finding libcareplus ------------------------------------------------------

def missing_reason(prefix: str | None = None, path: str | None = None) -> str | None:
    """Why libcareplus cannot be used (one line), or None when every tool is there."""
    try:
        find_libcareplus(prefix, path)
    except MissingToolError as exc:
        return str(exc)
    return None


def find_libcareplus(prefix: str | None = None, path: str | None = None) -> "LibcarePlus":
    """libcareplus's tools from `prefix`/bin (lab.yaml hotpatch.libcareplus_prefix) or else PATH."""
    where = "hotpatch.libcareplus_prefix" if prefix else "PATH"
    search = str(Path(prefix) / "bin") + os.pathsep + prefix if prefix else (path if path is not None
                                                                           else os.environ.get("PATH", ""))
    found: dict[str, str] = {}
    for tool in TOOLS:
        hit = shutil.which(tool, path=search)
        if hit:
            found[tool] = hit
    if not found:
        at = f"{where} {prefix}" if prefix else "PATH or hotpatch.libcareplus_prefix"
        raise MissingToolError(f"libcareplus not found on {at}: {INSTALL_HINT}")
    missing = [t for t in TOOLS if t not in found]
    if missing:
        raise MissingToolError(f"libcareplus incomplete on {where}: missing {', '.join(missing)}; reinstall it "
                               "(openEuler: dnf reinstall libcareplus)")
    bindirs = {str(Path(p).parent) for p in found.values()}
    if len(bindirs) != 1:
        raise MissingToolError(f"libcareplus tools are split over {', '.join(sorted(bindirs))}: libcare-patch-make "
                               "needs them in one directory; reinstall it")
    return LibcarePlus(Path(bindirs.pop()))


# -- ELF build IDs and kpatch headers -----------------------------------------

NT_GNU_BUILD_ID = 3
PT_NOTE = 4
SHT_NOTE = 7


def elf_build_id(path: str | os.PathLike) -> str:
    """The NT_GNU_BUILD_ID note of an ELF file, as lowercase hex (pure Python, no readelf)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF":
        raise HotpatchError(f"{path}: not an ELF file")
    is64, little = data[4] == 2, data[5] == 1
    end = "<" if little else ">"
    if is64:
        phoff, shoff = struct.unpack_from(end + "QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", data, 0x36)
    else:
        phoff, shoff = struct.unpack_from(end + "II", data, 0x1C)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", data, 0x2A)
    regions = []
    for i in range(phnum):
        base = phoff + i * phentsize
        if is64:
            p_type, _flags, offset, _va, _pa, filesz = struct.unpack_from(end + "IIQQQQ", data, base)
        else:
            p_type, offset, _va, _pa, filesz = struct.unpack_from(end + "IIIII", data, base)
        if p_type == PT_NOTE:
            regions.append((offset, filesz))
    for i in range(shnum):  # objects without program headers (e.g. .o) keep notes in sections
        base = shoff + i * shentsize
        if is64:
            _name, sh_type, _fl, _addr, offset, size = struct.unpack_from(end + "IIQQQQ", data, base)
        else:
            _name, sh_type, _fl, _addr, offset, size = struct.unpack_from(end + "IIIIII", data, base)
        if sh_type == SHT_NOTE:
            regions.append((offset, size))
    for offset, size in regions:
        pos, stop = offset, offset + size
        while pos + 12 <= stop:
            namesz, descsz, ntype = struct.unpack_from(end + "III", data, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            if ntype == NT_GNU_BUILD_ID and data[name_at:name_at + namesz].rstrip(b"\0") == b"GNU":
                return data[desc_at:desc_at + descsz].hex()
            pos = desc_at + ((descsz + 3) & ~3)
    raise HotpatchError(f"{path}: no GNU build ID note (link with -Wl,--build-id)")


def elf_sections(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Section name -> (file offset, size) of an ELF64 little-endian file."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise HotpatchError(f"{path}: not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off = heads[shstrndx][4]
    out = {}
    for name_off, _type, _flags, _addr, offset, size in heads:
        end = data.index(b"\0", str_off + name_off)
        out[data[str_off + name_off:end].decode(errors="replace")] = (offset, size)
    return out


def text_digest(path: str | os.PathLike) -> str:
    """sha256 of the .text section: equal for two binaries with the same code, whatever their notes or symbols."""
    import hashlib

    offset, size = elf_sections(path).get(".text", (0, 0))
    if not size:
        raise HotpatchError(f"{path}: no .text section")
    with open(path, "rb") as fh:
        fh.seek(offset)
        return hashlib.sha256(fh.read(size)).hexdigest()


KPATCH_MAGIC = b"KPATCH1"
_KPATCH_HEAD = struct.Struct("<8s8sBB6s64s41s7sQI")  # magic, id, flags, safety, pad, module, buildid, pad1, time, csum


@dataclass(frozen=True)
class KpatchHeader:
    path: str
    patch_id: str
    buildid: str
    build_time: int = 0


def read_kpatch_header(path: str | os.PathLike) -> KpatchHeader:
    """The header of a .kpatch file (struct kpatch_file), read directly."""
    with open(path, "rb") as fh:
        head = fh.read(_KPATCH_HEAD.size)
    if len(head) < _KPATCH_HEAD.size or not head.startswith(KPATCH_MAGIC):
        raise HotpatchError(f"{path}: not a kpatch file (no {KPATCH_MAGIC.decode()} magic)")
    magic, pid, _fl, _safety, _pad, _mod, buildid, _pad1, built, _csum = _KPATCH_HEAD.unpack(head)
    text = lambda b: b.split(b"\0", 1)[0].decode(errors="replace")  # noqa: E731
    return KpatchHeader(str(path), text(pid), text(buildid), built)


def parse_dump_header(text: str, path: str = "") -> KpatchHeader:
    """`libcare-dump -H -i FILE` output -> header."""
    fields = {}
    for line in text.splitlines():
        m = re.match(r"^(Patch Name|Magic|Patch id|buildid):\s*(.*?)\s*$", line)
        if m:
            fields[m.group(1)] = m.group(2)
    if "buildid" not in fields or "Patch id" not in fields:
        first = next((ln for ln in text.splitlines() if ln.strip()), "no output")
        raise HotpatchError(f"libcare-dump could not read {path or 'the kpatch'}: {first}")
    return KpatchHeader(fields.get("Patch Name", path), fields["Patch id"], fields["buildid"])


# -- libcare-ctl output -------------------------------------------------------

@dataclass(frozen=True)
class ApplyResult:
    pid: int
    kpatch: str
    patch_id: str
    frozen_time_us: int | None  # how long libcare-ctl held the process stopped
    hunks: int
    raw_output: str
    seconds: float = 0.0  # wall time of the libcare-ctl call


@dataclass(frozen=True)
class UnapplyResult:
    pid: int
    patch_id: str
    frozen_time_us: int | None
    hunks: int
    raw_output: str


@dataclass(frozen=True)
class AppliedPatches:
    """`libcare-ctl info -p PID` for one patched object."""
    pid: int
    target: str
    buildid: str
    count: int
    patch_ids: tuple[str, ...]


def parse_info(text: str) -> list[AppliedPatches]:
    out, cur = [], None
    ids: list[str] = []
    for line in text.splitlines() + [""]:
        m = re.match(r"^(Pid|Target|Build id|Applied patch number|Patch id):\s*(.*?)\s*$", line)
        if m:
            key, value = m.groups()
            if key == "Pid":
                cur = {"pid": int(value)}
                ids = []
            elif cur is not None and key == "Patch id":
                ids.append(value)
            elif cur is not None:
                cur[key] = value
        elif cur is not None and not line.strip():
            out.append(AppliedPatches(cur["pid"], cur.get("Target", ""), cur.get("Build id", ""),
                                      int(cur.get("Applied patch number", len(ids))), tuple(ids)))
            cur = None
    return out


def _frozen(text: str, word: str) -> int | None:
    m = re.search(rf"process {word} frozen_time is (\d+) microsecond", text)
    return int(m.group(1)) if m else None


def parse_apply(text: str) -> tuple[int | None, int | None]:
    """(hunks applied or None, frozen_time_us or None) from `libcare-ctl patch` output."""
    m = re.search(r"(\d+) patch hunk\(s\) have been successfully applied", text)
    return (int(m.group(1)) if m else None), _frozen(text, "patch")


def parse_unapply(text: str) -> tuple[int | None, int | None]:
    m = re.search(r"(\d+) patch hunk\(s\) were successfully cancelled", text)
    return (int(m.group(1)) if m else None), _frozen(text, "unpatch")


# -- diagnosis ----------------------------------------------------------------

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
    evidence += [ln.strip() for ln in output.splitlines() if "No patch(es) applicable" in ln]
    return BuildIdMismatch(
        kind="buildid-mismatch",
        verdict=(f"cannot load: buildID mismatch (patch built for {patch_buildid}, QEMU is {binary_buildid}); "
                 f"remedy: {BUILDID_REMEDY}"),
        evidence=tuple(evidence), remedy=BUILDID_REMEDY, patch_buildid=patch_buildid, binary_buildid=binary_buildid)


_SAFETY = re.compile(r"safety check failed (?:for|to) (?:0x)?([0-9a-f]+)")


def _lines(text: str) -> list[str]:
    """libcareplus prints some messages without a newline: split them so each is a line of evidence."""
    text = re.sub(r"(?<=\S)(?=kpatch_\w+\.c\(\d+\): )", "\n", text)
    text = re.sub(r"(?<=\S)(?=(Failed to do |Failed to make patch|Finished ptrace detaching|PID '\d+' process))",
                  "\n", text)
    return [ln.rstrip() for ln in text.splitlines()]


def diagnose_apply(output: str, symbolize: Callable[[int], str] | None = None) -> Diagnosis:
    """Why `libcare-ctl patch` applied nothing (output text only)."""
    lines = _lines(output)
    safety = [ln for ln in lines if _SAFETY.search(ln)]
    if safety:
        addr = int(_SAFETY.search(safety[0]).group(1), 16)
        func = (symbolize(addr) if symbolize else "") or f"0x{addr:x}"
        stack = _stack_lines(lines, addr, func)
        evidence = tuple(dict.fromkeys(safety + stack + [ln for ln in lines if "Failed to apply patch" in ln]))
        return Diagnosis("unsafe-on-stack",
                         f"loaded but cannot take effect: {func} is always on a thread's stack (libcareplus's safety "
                         f"check failed: the thread never left it); remedy: {STACK_REMEDY}", evidence, STACK_REMEDY)
    if any("No patch(es) applicable" in ln for ln in lines):
        return Diagnosis("buildid-mismatch",
                         f"cannot load: no object in the process has the patch's buildID; remedy: {BUILDID_REMEDY}",
                         tuple(ln for ln in lines if "No patch(es) applicable" in ln), BUILDID_REMEDY)
    errs = [ln for ln in lines if re.search(r"error|fail|can't|cannot", ln, re.I)]
    last = errs[-1] if errs else (next((ln for ln in reversed(lines) if ln.strip()), "no output"))
    return Diagnosis("failed", f"libcare-ctl patch failed: {last.strip()}", tuple(errs[-5:]))


def _stack_lines(lines: list[str], addr: int, func: str) -> list[str]:
    """The stack-trace lines libcare-ctl printed that name the offending function."""
    name = func.split("+", 1)[0].split(" ", 1)[0]
    return [ln.strip() for ln in lines if name and name in ln and "safety check" not in ln][:3]


_TOO_SMALL = re.compile(r"too small function to patch at (?:0x)?([0-9a-f]+)")


def diagnose_build(log_text: str, symbolize: Callable[[int], str] | None = None,
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
    compile_err = [ln for ln in lines if re.search(r"error:|\*\*\* \[|FAILED: ", ln)]
    if compile_err:
        return Diagnosis("failed", f"the build failed: {compile_err[0].strip()}", tuple(compile_err[:5]))
    tail = [ln for ln in lines if re.search(r"Failed|fatal|error", ln, re.I)]
    if tail:
        return Diagnosis("failed", f"libcare-patch-make made no kpatch: {tail[-1].strip()}", tuple(tail[-5:]))
    return Diagnosis("no-change", "libcare-patch-make made no kpatch: the patch changed no function that ends up in "
                     "the binary (nothing to patch); check that it touches code compiled into it",
                     tuple(applied))


# -- symbols of the target binary ---------------------------------------------

class Symbols:
    """Function symbols of an ELF (nm), for turning addresses into names and sizes."""

    def __init__(self, binary: str | os.PathLike):
        self.binary = str(binary)
        self._table: list[tuple[int, int, str]] | None = None

    def table(self) -> list[tuple[int, int, str]]:
        if self._table is None:
            proc = subprocess.run(["nm", "-S", "--defined-only", self.binary], capture_output=True, text=True,
                                  timeout=120)
            rows = []
            for line in proc.stdout.splitlines():
                parts = line.split()
                if len(parts) == 4 and parts[2] in "tTwW":
                    rows.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
            self._table = sorted(rows)
        return self._table

    def name_at(self, addr: int) -> str:
        best = ""
        for start, size, name in self.table():
            if start <= addr < start + max(size, 1):
                return name if addr == start else f"{name}+0x{addr - start:x}"
            if start > addr:
                break
        return best

    def size_of(self, name: str) -> int | None:
        for _start, size, sym in self.table():
            if sym == name:
                return size
        return None


# -- protecting the host's cc -------------------------------------------------

@dataclass
class _Saved:
    path: Path
    kind: str  # link | file | missing
    target: str | None = None
    backup: Path | None = None


@contextlib.contextmanager
def cc_guard(links: Sequence[str | os.PathLike] = CC_LINKS, backup_dir: str | os.PathLike | None = None,
             progress: Progress = _quiet) -> Iterator[list[_Saved]]:
    """Snapshot what `cc` resolves to (each link's target) and put it back in `finally`, on every path.

    Also covers SIGTERM while inside (turned into an exception so `finally` runs),
    and KeyboardInterrupt. A regular file in place of a link is backed up and restored.
    """
    saved: list[_Saved] = []
    backup_root = Path(backup_dir) if backup_dir else None
    for raw in links:
        path = Path(raw)
        if path.is_symlink():
            saved.append(_Saved(path, "link", os.readlink(path)))
        elif path.exists():
            root = backup_root or path.parent
            backup = root / f".{path.name}.kvm-lab-backup"
            shutil.copy2(path, backup)
            saved.append(_Saved(path, "file", backup=backup))
        else:
            saved.append(_Saved(path, "missing"))
    previous = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        def _on_term(signum, _frame):
            raise KeyboardInterrupt(f"signal {signum} during a libcare-patch-make run")
        previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        yield saved
    finally:
        try:
            for item in saved:
                if _restore(item):
                    progress(f"restored {item.path} -> {item.target or item.kind}")
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)


def _restore(item: _Saved) -> bool:
    """Put one saved path back; True when it had changed."""
    path = item.path
    if item.kind == "link":
        if path.is_symlink() and os.readlink(path) == item.target:
            return False
        tmp = path.with_name(f".{path.name}.kvm-lab-tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(item.target, tmp)
        os.replace(tmp, path)  # atomic: `cc` is never missing
        return True
    if item.kind == "file":
        if not path.is_symlink() and path.exists() and _same_file(path, item.backup):
            item.backup.unlink(missing_ok=True)
            return False
        tmp = path.with_name(f".{path.name}.kvm-lab-tmp")
        shutil.copy2(item.backup, tmp)
        os.replace(tmp, path)
        item.backup.unlink(missing_ok=True)
        return True
    if path.is_symlink() or path.exists():
        path.unlink()
        return True
    return False


def _same_file(a: Path, b: Path | None) -> bool:
    return b is not None and b.exists() and a.read_bytes() == b.read_bytes()


def restore_lpmakeorig(srcdir: str | os.PathLike) -> list[str]:
    """What libcare-patch-make's exit trap does: move `*.N.lpmakeorig` back (lowest N wins). Returns paths restored."""
    found: dict[str, Path] = {}
    for path in Path(srcdir).rglob("*.lpmakeorig"):
        m = re.match(r"^(.*)\.(\d+)\.lpmakeorig$", str(path))
        if not m:
            continue
        orig = m.group(1)
        if orig not in found or str(path) < str(found[orig]):
            found[orig] = path
    for orig, backup in found.items():
        os.replace(backup, orig)
    for path in Path(srcdir).rglob("*.lpmakeorig"):
        path.unlink()
    return sorted(found)


def patched_files(patch_files: Sequence[str | os.PathLike]) -> list[str]:
    """Paths (relative to the source tree, -p1) that a set of unified diffs touch."""
    out: list[str] = []
    for pf in patch_files:
        for line in Path(pf).read_text(errors="replace").splitlines():
            if line.startswith("+++ "):
                target = line[4:].split("\t", 1)[0].strip()
                if target != "/dev/null":
                    rel = target.split("/", 1)[1] if "/" in target else target
                    if rel not in out:
                        out.append(rel)
    return out


def _snapshot(source_dir: Path, rels: Sequence[str]) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for rel in rels:
        path = source_dir / rel
        out[rel] = path.read_bytes() if path.exists() else None
    return out


def _put_back(source_dir: Path, pristine: dict[str, bytes | None]) -> None:
    """Files as they were before the patches, with a fresh mtime: ninja must recompile them in the next
    original stage (the objects on disk are the patched ones now)."""
    restore_lpmakeorig(source_dir)
    for rel, content in pristine.items():
        path = source_dir / rel
        if content is None:
            path.unlink(missing_ok=True)
            continue
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
        os.utime(path, None)


# -- the driver ---------------------------------------------------------------

@dataclass(frozen=True)
class BuildResult:
    kpatch_paths: tuple[str, ...]
    buildid: str  # the buildID the kpatch targets (header), = the original binary's unless --buildid
    log_path: str
    patch_id: str = ""
    original_binary: str = ""  # lpmake/.../qemu-system-x86_64 of this run's original stage
    original_buildid: str = ""
    seconds: float = 0.0


_STAGES = re.compile(r"^(BUILDING ORIGINAL CODE|INSTALLING ORIGINAL|applying |BUILDING PATCHED CODE|"
                     r"INSTALLING PATCHED|MAKING PATCHES|patch for )")
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")


@dataclass(frozen=True)
class LibcarePlus:
    bindir: Path
    cc_links: tuple = CC_LINKS
    cc_lock: Path = CC_SWAP_LOCK

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    # ---- building

    def _patch_make(self, args: list[str], cwd: Path, log_path: Path, progress: Progress,
                    timeout: float) -> str:
        """Run libcare-patch-make with bash, TERM=dumb; stream its log; cc and sources restored whatever happens."""
        env = dict(os.environ, TERM="dumb", PATH=f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("MAKEFLAGS", None)
        argv = ["bash", self.tool("libcare-patch-make"), *args]
        srcdir = None
        if "-s" in args:
            srcdir = (cwd / args[args.index("-s") + 1]).resolve()
        with file_lock(self.cc_lock, "libcare-patch-make run (it swaps the machine's cc)", progress), cc_guard(self.cc_links, progress=progress), \
                open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(argv)}  (in {cwd})\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
            deadline = time.monotonic() + timeout
            last_note = time.monotonic()
            try:
                for line in proc.stdout:
                    log.write(line)
                    text = line.strip()
                    if _STAGES.match(text):
                        progress(f"libcare-patch-make: {text}")
                    elif time.monotonic() - last_note > 30 and _NINJA.match(text):
                        m = _NINJA.match(text)
                        progress(f"libcare-patch-make: compiling {m.group(1)}/{m.group(2)}")
                        last_note = time.monotonic()
                    if time.monotonic() > deadline:
                        raise HotpatchError(f"libcare-patch-make: still running after {timeout:.0f} s; stopped it "
                                            f"(log {log_path})")
                proc.wait()
            finally:
                if proc.poll() is None:
                    _stop_group(proc)
                if srcdir is not None:
                    restore_lpmakeorig(srcdir)  # the script's own exit trap may not have run
        return log_path.read_text(errors="replace")

    def build_original(self, builddir: str | os.PathLike, *, log_path: str | os.PathLike, jobs: int = 2,
                       progress: Progress = _quiet, timeout: float = 7200) -> Path:
        """libcare-patch-make --clean with no patch: only its original stage matters; returns lpmake's binary."""
        builddir = Path(builddir)
        self._patch_make(["--clean", "-s", "..", "-i", "orig", "-j", str(jobs)], builddir, Path(log_path),
                         progress, timeout)
        binary = _lpmake_binary(builddir)
        if binary is None:
            raise HotpatchError(f"libcare-patch-make's original stage installed no qemu-system-x86_64 under "
                                f"{builddir / 'lpmake'}: see {log_path}")
        return binary

    def build(self, source_dir: str | os.PathLike, patch_files: Sequence[str | os.PathLike],
              build_dir: str | os.PathLike, buildid: str | None = None, *, patch_id: str, jobs: int = 2,
              log_path: str | os.PathLike | None = None, clean: bool = False, expect_buildid: str | None = None,
              progress: Progress = _quiet, timeout: float = 7200) -> BuildResult:
        """Make a kpatch from `patch_files` (applied in order, -p1, to `source_dir`) in `build_dir`.

        `buildid` labels the kpatch for another binary (libcare-patch-make --buildid), e.g. the installed one.
        `expect_buildid` is the binary guests run on: the original stage must rebuild exactly it.
        Raises HotpatchFailed with a Diagnosis when no kpatch comes out.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,7}", patch_id):
            raise HotpatchError(f"patch id {patch_id!r}: 1 to 7 letters, digits, '.', '_' or '-' (libcareplus limit)")
        source_dir, build_dir = Path(source_dir).resolve(), Path(build_dir).resolve()
        patches = [str(Path(p).resolve()) for p in patch_files]
        for p in patches:
            if not Path(p).is_file():
                raise HotpatchError(f"patch file {p} not found")
        log = Path(log_path) if log_path else build_dir / f"libcare-patch-make-{patch_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        patchroot = build_dir / "patchroot"
        shutil.rmtree(patchroot, ignore_errors=True)
        shutil.rmtree(build_dir / ".lpmaketmp", ignore_errors=True)
        args = ["-s", os.path.relpath(source_dir, build_dir), "-i", patch_id, "-j", str(jobs)]
        if clean:
            args.insert(0, "--clean")
        if buildid:
            args += ["--buildid", buildid]
        started = time.monotonic()
        # libcare-patch-make backs every patched file up as NAME.0.lpmakeorig (its counter never moves), so
        # with two patches on one file its exit trap "restores" the first patch's result: keep our own copy.
        pristine = _snapshot(source_dir, patched_files(patches))
        try:
            text = self._patch_make(args + patches, build_dir, log, progress, timeout)
        finally:
            _put_back(source_dir, pristine)
        original = _lpmake_binary(build_dir)
        original_id = elf_build_id(original) if original else ""
        if expect_buildid and original and original_id != expect_buildid:
            raise HotpatchError(f"libcare-patch-make's original stage rebuilt a different QEMU (buildID {original_id}, "
                                f"guests run {expect_buildid}): the source tree or toolchain changed; rebuild the "
                                f"cache entry (delete {build_dir.parent.parent})")
        kpatches = sorted(str(p) for p in patchroot.glob("*.kpatch")) if patchroot.exists() else []
        symbols = Symbols(original) if original else None
        if not kpatches:
            raise HotpatchFailed(diagnose_build(text, symbols.name_at if symbols else None,
                                                symbols.size_of if symbols else None))
        head = read_kpatch_header(kpatches[0])
        return BuildResult(tuple(kpatches), head.buildid, str(log), patch_id, str(original or ""), original_id,
                           round(time.monotonic() - started, 1))

    # ---- inspecting

    def dump(self, kpatch: str | os.PathLike) -> str:
        proc = subprocess.run([self.tool("libcare-dump"), "-H", "-i", str(kpatch)], capture_output=True, text=True,
                              timeout=60)
        return proc.stdout + proc.stderr

    def header(self, kpatch: str | os.PathLike) -> KpatchHeader:
        """buildID and patch id of a kpatch as libcare-dump shows them."""
        return parse_dump_header(self.dump(kpatch), str(kpatch))

    # ---- patching a process

    def _ctl(self, *args: str, timeout: float = 300) -> str:
        try:
            proc = subprocess.run([self.tool("libcare-ctl"), *args], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise HotpatchError(f"libcare-ctl {' '.join(args)}: no answer after {timeout:.0f} s") from None
        return proc.stdout + proc.stderr

    def apply(self, pid: int, kpatch: str | os.PathLike) -> ApplyResult:
        """libcare-ctl patch -p PID KPATCH; raises HotpatchFailed (with a Diagnosis) unless hunks were applied."""
        head = read_kpatch_header(kpatch)
        exe = f"/proc/{pid}/exe"
        started = time.monotonic()
        text = self._ctl("patch", "-p", str(pid), str(kpatch))
        seconds = time.monotonic() - started
        hunks, frozen = parse_apply(text)
        if hunks:
            return ApplyResult(pid, str(kpatch), head.patch_id, frozen, hunks, text, round(seconds, 3))
        if "No patch(es) applicable" in text:
            try:
                binary_id = elf_build_id(exe)
            except (OSError, HotpatchError):
                binary_id = "unknown"
            mismatch = diagnose_buildid(head.buildid, binary_id, text, str(kpatch), os.path.realpath(exe))
            if mismatch:
                raise HotpatchFailed(mismatch)
            raise HotpatchFailed(Diagnosis(
                "failed", f"libcare-ctl applied nothing although the buildIDs match ({binary_id}): is patch "
                f"{head.patch_id} already applied? (libcare-ctl info -p {pid})",
                tuple(ln.strip() for ln in text.splitlines() if ln.strip())[-5:]))
        symbols = Symbols(os.path.realpath(exe)) if os.path.exists(exe) else None
        raise HotpatchFailed(diagnose_apply(text, _runtime_symbolizer(pid, symbols)))

    def info(self, pid: int) -> list[AppliedPatches]:
        text = self._ctl("info", "-p", str(pid))
        return parse_info(text)

    def unapply(self, pid: int, patch_id: str) -> UnapplyResult:
        text = self._ctl("unpatch", "-p", str(pid), "-i", patch_id)
        hunks, frozen = parse_unapply(text)
        if not hunks:
            last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "no output")
            raise HotpatchFailed(Diagnosis("failed", f"unapply of patch {patch_id} from PID {pid} failed: {last}",
                                           tuple(ln for ln in text.splitlines() if ln.strip())[-5:]))
        return UnapplyResult(pid, patch_id, frozen, hunks, text)


def _runtime_symbolizer(pid: int, symbols: Symbols | None) -> Callable[[int], str] | None:
    """Runtime address in PID -> function name, via the executable's load base (PIE)."""
    if symbols is None:
        return None
    exe = os.path.realpath(f"/proc/{pid}/exe")
    base = None
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[5] == exe and int(parts[2], 16) == 0:
                base = int(parts[0].split("-")[0], 16)
                break
    except OSError:
        pass

    def name(addr: int) -> str:
        for candidate in ([addr - base] if base is not None else []) + [addr]:
            found = symbols.name_at(candidate)
            if found:
                return found
        return ""
    return name


def _lpmake_binary(builddir: Path) -> Path | None:
    for candidate in (builddir / "lpmake" / "usr" / "bin" / "qemu-system-x86_64",
                      builddir / "lpmake" / "usr" / "local" / "bin" / "qemu-system-x86_64"):
        if candidate.exists():
            return candidate
    return None


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the run's process group, SIGKILL what is left after 10 s, reap it."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- openEuler libvirt: virsh hotpatch ----------------------------------------

def virsh_hotpatch_supported(host) -> bool:
    """openEuler's libvirt has `virsh hotpatch`; upstream/Debian libvirt does not."""
    proc = host.run("virsh help hotpatch", check=False, timeout=30)
    return proc.returncode == 0 and "hotpatch" in proc.stdout


def virsh_hotpatch(host, domain: str, action: str, *, patch: str | None = None, patch_id: str | None = None) -> str:
    """`virsh hotpatch DOMAIN --action apply|unapply|query` on a host (openEuler); returns its output text."""
    if action not in ("apply", "unapply", "query"):
        raise HotpatchError(f"virsh hotpatch --action {action!r}: use apply, unapply or query")
    cmd = f"virsh hotpatch {host.shell_quote(domain)} --action {action}"
    if patch:
        cmd += f" --patch {host.shell_quote(patch)}"
    if patch_id:
        cmd += f" --id {host.shell_quote(patch_id)}"
    proc = host.run(cmd, check=False, timeout=300)
    text = proc.stdout + proc.stderr
    if action == "apply" and "successfully applied" not in text:
        raise HotpatchFailed(diagnose_apply(text))
    if action == "unapply" and "successfully cancelled" not in text:
        raise HotpatchFailed(Diagnosis("failed", f"virsh hotpatch unapply failed: {text.strip().splitlines()[-1:]}",
                                       tuple(text.strip().splitlines()[-5:])))
    return text

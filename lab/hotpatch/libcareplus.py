"""The libcareplus driver: find its tools, build kpatches with libcare-patch-make,
inspect them with libcare-dump, and apply, query and take them back out of a running
QEMU with libcare-ctl, on this machine or on a lab host (`host=`). Every result is
judged from libcareplus's output text and the files it makes, never from exit codes
(`libcare-patch-make` exits 0 when it made no patch); a failure raises
`HotpatchFailed` with its `Diagnosis`.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lab.errors import HotpatchError, MissingToolError
from lab.hotpatch.cc_guard import CC_LINKS, CC_SWAP_LOCK, cc_guard, cc_swap_lock
from lab.hotpatch.ctl_output import (AppliedPatches, ApplyResult, UnapplyResult, parse_apply, parse_dump_header,
                                     parse_info, parse_unapply)
from lab.hotpatch.diagnosis import (NOT_APPLICABLE, Diagnosis, HotpatchFailed, diagnose_apply, diagnose_build,
                                    diagnose_buildid, failed)
from lab.hotpatch.kpatch import KpatchHeader, read_kpatch_header
from lab.hotpatch.process_site import Site, site_for
from lab.hotpatch.progress import Progress, quiet
from lab.hotpatch.source_tree import patched_files, put_back, restore_lpmakeorig, snapshot
from lab.runtime.hosts import Host
from lab.stacks.compiler_cache import kpcc_env
from lab.util.elf import Symbols, build_id
from lab.util.process import run, stream

TOOLS = ("libcare-ctl", "libcare-patch-make", "libcare-dump", "libcare-cc", "kpatch_gensrc", "kpatch_strip",
         "kpatch_make")
INSTALL_HINT = "install it (openEuler: dnf install libcareplus; elsewhere build it from its source and put it on PATH)"
BINARY = "qemu-system-x86_64"
# libcare-patch-make's stage banners, worth a progress line each; ninja's [n/m] only now and then.
_STAGES = re.compile(r"^(BUILDING ORIGINAL CODE|INSTALLING ORIGINAL|applying |BUILDING PATCHED CODE|"
                     r"INSTALLING PATCHED|MAKING PATCHES|patch for )")
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
NINJA_NOTE_EVERY_S = 30


# -- finding libcareplus ------------------------------------------------------

def missing_reason(prefix: str | None = None, path: str | None = None) -> str | None:
    """Why libcareplus cannot be used (one line), or None when every tool is there."""
    try:
        find_libcareplus(prefix, path)
    except MissingToolError as exc:
        return str(exc)
    return None


def find_libcareplus(prefix: str | None = None, path: str | None = None) -> LibcarePlus:
    """libcareplus's tools from `prefix`/bin (lab.yaml hotpatch.libcareplus_prefix) or else PATH."""
    where = "hotpatch.libcareplus_prefix" if prefix else "PATH"
    search = str(Path(prefix) / "bin") + os.pathsep + prefix if prefix else (path if path is not None
                                                                           else os.environ.get("PATH", ""))
    found = {tool: hit for tool in TOOLS if (hit := shutil.which(tool, path=search))}
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


@dataclass(frozen=True)
class LibcarePlus:
    bindir: Path
    cc_links: tuple = CC_LINKS
    cc_lock: Path = CC_SWAP_LOCK

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    def site(self, host: Host | None = None) -> Site:
        """Where libcare-ctl runs: on `host` (a lab Host) over SSH, or on this machine."""
        return site_for(host, self.bindir)

    # ---- building

    def _patch_make(self, args: list[str], cwd: Path, log_path: Path, progress: Progress,
                    timeout: float) -> str:
        """Run libcare-patch-make with bash, TERM=dumb; stream its log; cc and sources restored whatever happens."""
        env = kpcc_env(dict(os.environ, TERM="dumb", PATH=f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}"))
        env.pop("MAKEFLAGS", None)
        argv = ["bash", self.tool("libcare-patch-make"), *args]
        srcdir = (cwd / args[args.index("-s") + 1]).resolve() if "-s" in args else None
        with cc_swap_lock(self.cc_lock, progress), cc_guard(self.cc_links, progress=progress), \
                open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(argv)}  (in {cwd})\n")
            log.flush()
            deadline = time.monotonic() + timeout
            last_note = time.monotonic()
            try:
                # check=False: its exit status says nothing; closing the stream ends its whole process group.
                with contextlib.closing(stream(argv, cwd=cwd, env=env, check=False, errors="replace",
                                               error=HotpatchError)) as lines:
                    for line in lines:
                        log.write(line + "\n")
                        text = line.strip()
                        ninja = _NINJA.match(text)
                        if _STAGES.match(text):
                            progress(f"libcare-patch-make: {text}")
                        elif ninja and time.monotonic() - last_note > NINJA_NOTE_EVERY_S:
                            progress(f"libcare-patch-make: compiling {ninja.group(1)}/{ninja.group(2)}")
                            last_note = time.monotonic()
                        if time.monotonic() > deadline:
                            raise HotpatchError(f"libcare-patch-make: still running after {timeout:.0f} s; stopped "
                                                f"it (log {log_path})")
            finally:
                if srcdir is not None:
                    restore_lpmakeorig(srcdir)  # the script's own exit trap may not have run
        return log_path.read_text(errors="replace")

    def build_original(self, builddir: str | os.PathLike, *, log_path: str | os.PathLike, jobs: int = 2,
                       progress: Progress = quiet, timeout: float = 7200) -> Path:
        """libcare-patch-make --clean with no patch: only its original stage matters; returns lpmake's binary."""
        builddir = Path(builddir)
        self._patch_make(["--clean", "-s", "..", "-i", "orig", "-j", str(jobs)], builddir, Path(log_path),
                         progress, timeout)
        binary = lpmake_binary(builddir)
        if binary is None:
            raise HotpatchError(f"libcare-patch-make's original stage installed no {BINARY} under "
                                f"{builddir / 'lpmake'}: see {log_path}")
        return binary

    def build(self, source_dir: str | os.PathLike, patch_files: Sequence[str | os.PathLike],
              build_dir: str | os.PathLike, buildid: str | None = None, *, patch_id: str, jobs: int = 2,
              log_path: str | os.PathLike | None = None, clean: bool = False, expect_buildid: str | None = None,
              progress: Progress = quiet, timeout: float = 7200) -> BuildResult:
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
        pristine = snapshot(source_dir, patched_files(patches))  # see source_tree: its own backups are not enough
        try:
            text = self._patch_make(args + patches, build_dir, log, progress, timeout)
        finally:
            put_back(source_dir, pristine)
        original = lpmake_binary(build_dir)
        original_id = build_id(original, error=HotpatchError) if original else ""
        if expect_buildid and original and original_id != expect_buildid:
            raise HotpatchError(f"libcare-patch-make's original stage rebuilt a different QEMU (buildID {original_id}, "
                                f"guests run {expect_buildid}): the source tree or toolchain changed; rebuild the "
                                f"cache entry (delete {build_dir.parent.parent})")
        kpatches = sorted(str(p) for p in patchroot.glob("*.kpatch")) if patchroot.exists() else []
        if not kpatches:
            symbols = Symbols(original, error=HotpatchError) if original else None
            raise HotpatchFailed(diagnose_build(text, symbols.name_at if symbols else None,
                                                symbols.size_of if symbols else None))
        head = read_kpatch_header(kpatches[0])
        return BuildResult(tuple(kpatches), head.buildid, str(log), patch_id, str(original or ""), original_id,
                           round(time.monotonic() - started, 1))

    # ---- inspecting

    def dump(self, kpatch: str | os.PathLike) -> str:
        proc = run([self.tool("libcare-dump"), "-H", "-i", str(kpatch)], check=False, timeout=60, error=HotpatchError)
        return proc.stdout + proc.stderr

    def header(self, kpatch: str | os.PathLike) -> KpatchHeader:
        """buildID and patch id of a kpatch as libcare-dump shows them."""
        return parse_dump_header(self.dump(kpatch), str(kpatch))

    # ---- patching a process (on this machine, or on `host` over SSH)

    def apply(self, pid: int, kpatch: str | os.PathLike, host: Host | None = None) -> ApplyResult:
        """libcare-ctl patch -p PID KPATCH; raises HotpatchFailed (with a Diagnosis) unless hunks were applied."""
        site = self.site(host)
        head = read_kpatch_header(kpatch)
        where = site.stage(kpatch)
        started = time.monotonic()
        text = site.ctl(["patch", "-p", str(pid), where])
        seconds = time.monotonic() - started
        hunks, frozen = parse_apply(text)
        if hunks:
            return ApplyResult(pid, str(kpatch), head.patch_id, frozen, hunks, text, round(seconds, 3))
        if NOT_APPLICABLE in text:
            binary_id = site.exe_build_id(pid)
            mismatch = diagnose_buildid(head.buildid, binary_id, text, str(kpatch), site.exe(pid))
            if mismatch:
                raise HotpatchFailed(mismatch)
            raise HotpatchFailed(Diagnosis(
                "failed", f"libcare-ctl applied nothing although the buildIDs match ({binary_id}): is patch "
                f"{head.patch_id} already applied? (libcare-ctl info -p {pid})",
                tuple(ln.strip() for ln in text.splitlines() if ln.strip())[-5:]))
        raise HotpatchFailed(diagnose_apply(text, site.symbolizer(pid)))

    def info(self, pid: int, host: Host | None = None) -> list[AppliedPatches]:
        return parse_info(self.site(host).ctl(["info", "-p", str(pid)]))

    def unapply(self, pid: int, patch_id: str, host: Host | None = None) -> UnapplyResult:
        text = self.site(host).ctl(["unpatch", "-p", str(pid), "-i", patch_id])
        hunks, frozen = parse_unapply(text)
        if not hunks:
            raise HotpatchFailed(failed(f"unapply of patch {patch_id} from PID {pid} failed", text))
        return UnapplyResult(pid, patch_id, frozen, hunks, text)


def lpmake_binary(builddir: Path) -> Path | None:
    """The emulator libcare-patch-make's original stage installed under builddir/lpmake, if any."""
    for candidate in (builddir / "lpmake" / "usr" / "bin" / BINARY,
                      builddir / "lpmake" / "usr" / "local" / "bin" / BINARY):
        if candidate.exists():
            return candidate
    return None

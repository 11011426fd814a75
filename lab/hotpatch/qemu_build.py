"""A QEMU the lab can hot patch, built from the distro's source package of the installed
version (see qemu_source), configured for x86_64-softmmu only, with the distro's
firmware directories as its firmware path (what Debian's own packaging does), so libvirt
runs the binary as is: no wrapper, no `-L`. Two ways to build the same tree: plain
(configure + make, no libcareplus needed; proves the source build works) and libcare
(through libcare-patch-make's original stage, so the binary and the per-file original
assembly are what later kpatch builds are made against; guests for hot patch tests run
on that binary). Builds are cached under HotpatchSpec.build_cache by source version,
mode and configuration, one build at a time (file lock), and count only once their
`build.json` has been written (atomically, last): an interrupted build is redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from lab.errors import HotpatchError
from lab.hotpatch.libcareplus import BINARY, LibcarePlus
from lab.hotpatch.progress import Progress, quiet
from lab.hotpatch.qemu_source import (QemuSource, disable_edk2_unpacking, ensure_build_deps, fetch_source,
                                      installed_source)
from lab.stacks.build import CONFIGURE as STACK_CONFIGURE, FIRMWARE_PATH
from lab.stacks.compiler_cache import ccache_env, ccache_stats, compiling, hit_share
from lab.util.elf import build_id
from lab.util.files import atomic_write_json, file_lock
from lab.util.process import run

# The stack builds' configuration (firmware from the distro's directories, as Debian's own build): one
# configuration, so the plain build and a stack build of the same source share the compiler cache's objects.
CONFIGURE_ARGS = STACK_CONFIGURE
MODES = ("plain", "libcare")
BUILD_TIMEOUT = 7200.0


@dataclass(frozen=True)
class QemuBuild:
    """A finished build in the cache."""
    dir: Path  # the cache entry
    source: QemuSource
    mode: str  # plain | libcare
    srcdir: Path  # unpacked source tree
    builddir: Path  # its build/ directory (libcare-patch-make runs here)
    binary: Path  # the emulator guests run on (a stable copy, never rewritten)
    buildid: str
    minutes: float

    @property
    def emulator(self) -> str:
        return str(self.binary)


def pkgversion(source: QemuSource) -> str:
    """What QMP query-version reports as `package` for the lab's build (before any hot patch)."""
    return f"kvm-lab {source.version}"


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _logged(argv: list[str], log: IO[str], cwd: Path, env: dict | None = None,
            timeout: float = BUILD_TIMEOUT) -> int:
    """Run a build step with its output appended to the build log; its exit status."""
    return run(argv, check=False, timeout=timeout, cwd=cwd, env=env, log=log, error=HotpatchError).returncode


def configure(srcdir: Path, log: IO[str], source: QemuSource, cached: bool) -> Path:
    """`cached`: through the compiler cache (a plain build); meson keeps the compiler configure found."""
    builddir = srcdir / "build"
    builddir.mkdir(exist_ok=True)
    # cc, not an absolute compiler path: libcare-patch-make swaps the `cc` symlink to put libcare-cc in.
    env = dict(ccache_env() if cached else os.environ, CC="cc", TERM="dumb")
    rc = _logged(["../configure", *CONFIGURE_ARGS, f"--with-pkgversion={pkgversion(source)}"], log, builddir,
                 env, timeout=1200)
    if rc != 0:
        raise HotpatchError(f"QEMU configure failed (exit {rc}): {_tail(Path(log.name))}; full log {log.name}")
    return builddir


LPMAKEFILE = """\
# Written by kvm-acceptance (lab/hotpatch/qemu_build.py). libcare-patch-make uses ./lpmakefile when it
# exists: build and install only the emulator (QEMU's `all` also builds tools and unit tests).
all:
\t$(MAKE) -f Makefile qemu-system-x86_64
install: all
\tinstall -D -m 0755 qemu-system-x86_64 $(DESTDIR)/usr/bin/qemu-system-x86_64
clean:
\t$(MAKE) -f Makefile clean
.PHONY: all install clean
"""


def write_lpmakefile(builddir: Path) -> Path:
    path = builddir / "lpmakefile"
    path.write_text(LPMAKEFILE)
    return path


def make_plain(builddir: Path, log: IO[str], jobs: int) -> Path:
    """Inside `compiling()`: it holds the lock that keeps libcare-patch-make's swap of `cc` out."""
    rc = _logged(["make", f"-j{jobs}", BINARY], log, builddir, dict(ccache_env(), TERM="dumb"))
    binary = builddir / BINARY
    if rc != 0 or not binary.exists():
        raise HotpatchError(f"QEMU build failed (exit {rc}): {_tail(Path(log.name))}; full log {log.name}")
    return binary


def config_hash() -> str:
    """Changes whenever the way the tree is configured or tweaked changes: such builds are not reused."""
    recipe = "\n".join([*CONFIGURE_ARGS, "pkgversion=kvm-lab", "edk2-unpacking=off"])
    return hashlib.sha256(recipe.encode()).hexdigest()[:8]


def install_emulator(entry: Path, built: Path) -> Path:
    """Copy the emulator to <entry>/root/usr/bin, a stable path later builds in the tree never rewrite.

    QEMU finds firmware relative to its own location (a relocatable install: /usr/bin/../share/seabios),
    so <entry>/root/usr/share/seabios etc. are links to the distro's firmware directories.
    """
    root = entry / "root"
    binary = root / "usr" / "bin" / BINARY
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(BINARY + ".tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, binary)  # a guest may be running the old copy: replace, never rewrite in place
    for firmware in FIRMWARE_PATH:
        link = root / firmware.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(firmware)
    return binary


def cache_dir(build_cache: str | os.PathLike, source: QemuSource, mode: str) -> Path:
    return Path(build_cache) / f"qemu-{source.slug}-{mode}-{config_hash()}"


def load_build(entry: Path) -> QemuBuild | None:
    """A complete cache entry, or None (missing, interrupted, or its binary gone)."""
    meta = entry / "build.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    build = QemuBuild(dir=entry, source=QemuSource(**data["source"]), mode=data["mode"],
                      srcdir=Path(data["srcdir"]), builddir=Path(data["builddir"]), binary=Path(data["binary"]),
                      buildid=data["buildid"], minutes=data["minutes"])
    return build if build.binary.exists() else None


def _write_meta(build: QemuBuild) -> None:
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(build).items()}
    atomic_write_json(build.dir / "build.json", data)


def ensure_qemu_build(build_cache: str | os.PathLike, *, mode: str = "libcare", libcare: LibcarePlus | None = None,
                      progress: Progress = quiet, jobs: int | None = None,
                      source: QemuSource | None = None) -> QemuBuild:
    """The cached build for the installed QEMU's source version in `mode`, building it when needed.

    mode "libcare" needs `libcare` (lab.hotpatch.libcareplus.find_libcareplus()) and builds through
    libcare-patch-make's original stage; mode "plain" needs nothing but apt.
    """
    if mode not in MODES:
        raise HotpatchError(f"QEMU build mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "libcare" and libcare is None:
        raise HotpatchError("a libcare build of QEMU needs libcareplus (lab.hotpatch.libcareplus.find_libcareplus())")
    source = source or installed_source()
    entry = cache_dir(build_cache, source, mode)
    done = load_build(entry)
    if done:
        return done
    jobs = jobs or os.cpu_count() or 2
    with file_lock(Path(build_cache) / f".{entry.name}.lock", "QEMU build of this version", progress):
        done = load_build(entry)  # somebody else finished it while we waited
        if done:
            return done
        started = time.monotonic()
        if entry.exists():
            progress(f"removing an incomplete build in {entry}")
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        log_path = entry / "build.log"
        ensure_build_deps(progress)
        srcdir = fetch_source(source, entry, progress)
        disable_edk2_unpacking(srcdir)
        with open(log_path, "a") as log:
            if mode == "plain":
                with compiling(progress):
                    progress(f"configuring QEMU {source.version} for x86_64-softmmu (log {log_path})")
                    builddir = configure(srcdir, log, source, cached=True)
                    progress(f"building QEMU with make -j{jobs} through ccache (about 6 minutes on 2 cores, "
                             "1-2 when a stack build of this source filled the cache)")
                    before = ccache_stats()
                    built = make_plain(builddir, log, jobs)
                    progress(hit_share(before, ccache_stats()))
            else:
                progress(f"configuring QEMU {source.version} for x86_64-softmmu (log {log_path})")
                builddir = configure(srcdir, log, source, cached=False)
                progress(f"building QEMU through libcare-patch-make's original stage, -j{jobs} "
                         "(about 5 minutes on 2 cores)")
                write_lpmakefile(builddir)
                built = libcare.build_original(builddir, log_path=log_path, jobs=jobs, progress=progress)
        binary = install_emulator(entry, built)
        build = QemuBuild(dir=entry, source=source, mode=mode, srcdir=srcdir, builddir=builddir, binary=binary,
                          buildid=build_id(binary, error=HotpatchError),
                          minutes=round((time.monotonic() - started) / 60, 2))
        _write_meta(build)
        progress(f"QEMU {source.version} ({mode}) built in {build.minutes:.1f} min: {binary} buildID {build.buildid}")
        return build

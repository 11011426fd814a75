"""A QEMU source build as a stack source: the distro's source package, patches applied, built for
x86_64-softmmu and installed into a tree whose only file is usr/bin/qemu-system-x86_64.

The source comes from a private deb-src index (nothing is added to apt's own sources);
`apt-get source --download-only`, `dpkg-source -x` (Debian's patches), then each lab.yaml
patch with `patch -p1` (one that does not apply is one line naming it), then the hot patch
suite's configuration (lab/hotpatch/qemu_build.py: no modules, the distro's firmware
directories, so the tree needs nothing else of its own). The build dependencies must be
installed (one line names the missing ones); nothing is installed here. Cached like archive
trees, by source version and a digest of the patches and the recipe; a build that fails leaves
no tree, and its log is kept under the cache's logs/.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from lab.config.stacks import StackSpec
from lab.errors import StackError
from lab.runtime.state import StackRecord
from lab.stacks.archive import PrivateApt, matches, read_suite, upstream
from lab.stacks.cache import Entry, StackCache, write_manifest
from lab.stacks.compiler_cache import ccache_stats, compiling, hit_share
from lab.util.process import run

COMPONENT = "qemu-build"
SOURCE_PACKAGE = "qemu"
BINARY = "qemu-system-x86_64"
FIRMWARE_PATH = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
# libnfs: QEMU's own NFS client, which guests' disks use in a `storage: nfs` lab (the distro has it as a
# module of qemu-block-extra; a build without modules compiles it in).
CONFIGURE = ("--target-list=x86_64-softmmu", "--without-default-features", "--enable-kvm", "--enable-tcg",
             "--enable-libnfs", "--enable-fdt=system", "--disable-docs", "--disable-install-blobs", "--prefix=/usr",
             "--firmwarepath=" + ":".join(FIRMWARE_PATH))
BUILD_DEPS = ("gcc", "make", "ccache", "ninja-build", "meson", "libglib2.0-dev", "libpixman-1-dev", "libfdt-dev",
              "libnfs-dev", "flex", "bison", "pkg-config", "dpkg-dev", "patch")
BUILD_TIMEOUT = 7200.0


def distro_suite() -> str:
    """The distribution's own suite (bookworm), from /etc/os-release."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    m = re.search(r"^VERSION_CODENAME=(\S+)", text, re.M)
    if not m:
        raise StackError("no VERSION_CODENAME in /etc/os-release: name the suite (stacks.<name>.suite)")
    return m[1].strip('"')


def recipe_digest(spec: StackSpec) -> str:
    """Names a build: the same patches (by content) and the same recipe give the same digest."""
    h = hashlib.sha256("\n".join(CONFIGURE).encode())
    for patch in spec.patches:
        try:
            h.update(hashlib.sha256(Path(patch).read_bytes()).digest())
        except OSError as exc:
            raise StackError(f"patch {patch}: cannot read it ({exc.strerror})") from None
    return h.hexdigest()[:12]


def backported_commits(patches: list[str]) -> list[str]:
    """Upstream commits the patches say they backport: "... of upstream 03bfc2188f06 ..." in a patch's
    header (the text before its first diff), the convention of labs/patches/."""
    found: list[str] = []
    for patch in patches:
        header = re.split(r"^(?:diff |--- )", Path(patch).read_text(errors="replace"), maxsplit=1, flags=re.M)[0]
        found += [c for c in re.findall(r"\bupstream\s+(?:commit\s+)?([0-9a-f]{12,40})\b", header, re.I)
                  if c not in found]
    return found


def missing_build_deps() -> list[str]:
    missing = []
    for package in BUILD_DEPS:
        out = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], check=False, error=StackError).stdout
        if not out.startswith("ii"):
            missing.append(package)
    return missing


def build_stack(name: str, spec: StackSpec, cache: StackCache, progress: Callable[[str], None]) -> StackRecord:
    suite = spec.suite or distro_suite()
    digest = recipe_digest(spec)
    with cache.locked(progress):
        entry = next((e for e in cache.entries(COMPONENT) if e.manifest.get("digest") == digest
                      and e.manifest.get("suite") == suite and matches(spec.qemu, e.manifest["version"])), None)
        if entry is None:
            missing = missing_build_deps()
            if missing:
                raise StackError(f"stacks.{name}: building QEMU needs {', '.join(missing)}: "
                                 f"apt-get install {' '.join(missing)}")
            apt = read_suite(cache, name, suite, spec.mirror, progress, kind="deb-src")
            versions = apt.versions(SOURCE_PACKAGE)
            version = next((v for v in versions if matches(spec.qemu, v)), None)
            if version is None:
                raise StackError(f"stacks.{name}.qemu: source {spec.qemu} is not in {apt.where} (qemu sources "
                                 f"there: {', '.join(versions) or 'none'}); name one of those versions")
            entry = build(name, spec, cache, apt, version, digest, progress)
    version = entry.manifest["version"]
    return StackRecord(name=name, source="build", qemu=f"{version}+kvmlab.{digest}", libvirt=system_libvirt(),
                       qemu_upstream=upstream(version), layers=[str(entry.usr)],
                       origin=f"QEMU {version} built from {suite}'s source with {len(spec.patches)} patch(es)",
                       backports=backported_commits(spec.patches))


def system_libvirt() -> str:
    out = run(["dpkg-query", "-W", "-f=${Version}", "libvirt-daemon"], check=False, error=StackError)
    return out.stdout.strip() if out.returncode == 0 else ""


def compile_tree(tree: Path, partial: Path, name: str, digest: str, what: str, log, progress: Callable[[str], None]) -> str:
    """Configure and build the QEMU source `tree` as every stack build does (through the compiler cache), and
    install its emulator into partial/tree/usr/bin; what it cost, for the manifest."""
    meson = tree / "meson.build"  # the dfsg tarball has no edk2 blobs to unpack
    meson.write_text(re.sub(r"unpack_edk2_blobs = bzip2\.found\(\)", "unpack_edk2_blobs = false", meson.read_text()))
    builddir = tree / "build"
    builddir.mkdir()
    jobs = os.cpu_count() or 2
    with compiling(progress) as env:
        before, started = ccache_stats(), time.monotonic()
        progress(f"stack {name}: configuring and building {what} with make -j{jobs} through ccache (log {log.name})")
        run(["../configure", *CONFIGURE, f"--with-pkgversion=kvm-lab stack {name} {digest}"], cwd=builddir,
            timeout=1200, log=log, env=env, error=StackError, what=f"stacks.{name}: QEMU configure")
        run(["make", f"-j{jobs}", BINARY], cwd=builddir, timeout=BUILD_TIMEOUT, log=log, env=env,
            error=StackError, what=f"stacks.{name}: QEMU build")
        built = f"{time.monotonic() - started:.0f} s, {hit_share(before, ccache_stats())}"
    installed = partial / "tree" / "usr" / "bin" / BINARY
    installed.parent.mkdir(parents=True)
    shutil.copy2(builddir / BINARY, installed)
    return built


def build(name: str, spec: StackSpec, cache: StackCache, apt: PrivateApt, version: str, digest: str,
          progress: Callable[[str], None]) -> Entry:
    logs = cache.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}-{digest}.log"
    with cache.installing(COMPONENT, f"{version}-{digest}") as partial, open(log_path, "w") as log:
        work = partial / "src"
        work.mkdir()
        progress(f"stack {name}: fetching the source of qemu {version} from {apt.where}")
        run(["apt-get", *apt.options(), "source", "--download-only", f"{SOURCE_PACKAGE}={version}"], cwd=work,
            timeout=1200, log=log, error=StackError, what=f"stacks.{name}: apt-get source {SOURCE_PACKAGE}={version}")
        dsc = next(work.glob(f"{SOURCE_PACKAGE}_*.dsc"))
        tree = work / "tree"
        progress(f"stack {name}: unpacking {dsc.name} (upstream tarball + Debian patches)")
        run(["dpkg-source", "--no-check", "-x", dsc, tree], timeout=900, log=log, error=StackError,
            what=f"stacks.{name}: dpkg-source -x {dsc.name}")
        for patch in spec.patches:
            run(["patch", "-p1", "--forward", "--batch", "-i", patch], cwd=tree, log=log, error=StackError,
                what=f"stacks.{name}.patches: {patch} does not apply to qemu {version}")
        built = compile_tree(tree, partial, name, digest, f"QEMU {version}", log, progress)
        shutil.rmtree(work)
        write_manifest(partial, {"component": COMPONENT, "version": version, "upstream": upstream(version),
                                 "suite": apt.suite, "mirror": apt.mirror, "digest": digest,
                                 "patches": list(spec.patches), "configure": list(CONFIGURE), "built": built})
    progress(f"stack {name}: QEMU {version} built in {built} (log {log_path})")
    return next(e for e in cache.entries(COMPONENT) if e.manifest.get("digest") == digest
                and e.manifest["version"] == version)

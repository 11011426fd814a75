"""Guest image builder: Debian cloud kernel + busybox-static initramfs + the static C agent.

The image is rebuilt only when an input changes; the result is cached under
cache_dir/<key>/ and shared by every pytest-xdist worker (flock + atomic rename).
"""
from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ImageError
from lab.guest.kernel_modules import KERNEL_ENV, ko_bytes, module_files, module_order
from lab.util.files import flock
from lab.util.process import run

# Bump when the build recipe below changes (modules, applets, layout): it is part of the key.
BUILDER_VERSION = "1"
DEFAULT_CACHE = Path("/var/cache/kvm-acceptance-lab/guest")
KERNEL_META = {"amd64": "linux-image-cloud-amd64"}
BUSYBOX = Path("/bin/busybox")
HERE = Path(__file__).resolve().parent
AGENT_DIR = HERE / "agent"  # main.c, util.c, memory.c, disk.c and agent.h: one static binary
INIT_SRC = HERE / "init.sh"
# Modules the guest needs (8250 serial is built in); their dependencies come along.
MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_console")
APPLETS = ("sh", "mount", "umount", "ip", "insmod", "lsmod", "sleep", "poweroff", "reboot",
           "cat", "echo", "ls", "mkdir", "dmesg", "sync", "ps", "kill")
SETUP_HINT = "make setup does"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    key: str  # hash of all build inputs; also the cache directory name
    kernel_version: str  # uname -r of the guest kernel


@dataclass(frozen=True)
class _Inputs:
    kernel_pkg: str  # concrete package, e.g. linux-image-6.1.0-56-cloud-amd64
    kernel_pkg_version: str
    arch: str
    busybox_version: str
    agent_src: bytes
    init_src: bytes

    def key(self) -> str:
        h = hashlib.sha256()
        for part in (BUILDER_VERSION, self.kernel_pkg, self.kernel_pkg_version, self.arch,
                     self.busybox_version):
            h.update(part.encode() + b"\0")
        h.update(hashlib.sha256(self.agent_src).digest())
        h.update(hashlib.sha256(self.init_src).digest())
        return h.hexdigest()[:16]


# ---------- public API ----------

def ensure_image(cache_dir: Path = DEFAULT_CACHE,
                 progress: Callable[[str], None] = lambda msg: None) -> GuestImage:
    """Return the cached image for the current inputs, building it first if needed."""
    inputs = _gather_inputs()
    key = inputs.key()
    final = cache_dir / key
    if _complete(final):  # rename is atomic: a visible directory is a whole image
        return _load(final, key)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot create guest cache {cache_dir}: {e.strerror}; run as root or pass another cache dir") from None
    with flock(cache_dir / ".lock"):
        if _complete(final):  # another worker built it while we waited
            return _load(final, key)
        _sweep_partial(cache_dir)
        progress(f"building guest image {key} ({inputs.kernel_pkg} {inputs.kernel_pkg_version})")
        deb = _kernel_deb(cache_dir / "debs", inputs, progress)
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
        try:
            _build(build, deb, inputs, key, progress)
            build.chmod(0o755)  # qemu may run as another user (libvirt-qemu)
            build.rename(final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return _load(final, key)


# ---------- inputs ----------

def _gather_inputs() -> _Inputs:
    for tool, pkg in (("apt-cache", "apt"), ("dpkg-query", "dpkg")):
        if not shutil.which(tool):
            raise ImageError(f"{tool} not found: the guest image needs a Debian host with {pkg}")
    arch = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").decode().strip()
    meta = os.environ.get(KERNEL_ENV) or KERNEL_META.get(arch)
    if not meta:
        raise ImageError(f"no default guest kernel for architecture {arch}: set {KERNEL_ENV} to a linux-image package")
    pkg, version = _resolve_kernel(meta)
    return _Inputs(kernel_pkg=pkg, kernel_pkg_version=version, arch=arch,
                   busybox_version=_busybox_version(),
                   agent_src=_agent_source(), init_src=_read(INIT_SRC))


@functools.lru_cache(maxsize=8)  # apt-cache takes ~0.7 s when apt keeps no pkgcache
def _resolve_kernel(name: str) -> tuple[str, str]:
    """Follow a metapackage (linux-image-cloud-amd64) to the versioned package it depends on."""
    fields = _apt_show(name)
    if not re.match(r"linux-image-\d", name):
        for alternative in re.split(r"[,|]", fields.get("Depends", "")):
            m = re.match(r"\s*(linux-image-\d\S*)(?:\s*\(=\s*([^)\s]+)\))?", alternative)
            if m:  # Debian pins the exact version: "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
                return (m[1], m[2]) if m[2] else _resolve_kernel(m[1])
    if "Version" not in fields:
        raise ImageError(f"apt-cache show {name} gave no Version: run apt-get update ({SETUP_HINT})")
    return name, fields["Version"]


def _apt_show(pkg: str) -> dict[str, str]:
    """Fields of the candidate version of pkg, as apt-cache show prints them."""
    out = _run(["apt-cache", "show", "--no-all-versions", pkg], f"apt-cache show {pkg}",
               fix=f"run apt-get update ({SETUP_HINT}) or set {KERNEL_ENV} to an available linux-image package")
    fields: dict[str, str] = {}
    for line in out.decode(errors="replace").split("\n\n")[0].splitlines():
        if ":" in line and not line.startswith(" "):
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    if not fields:
        raise ImageError(f"apt does not know {pkg}: run apt-get update ({SETUP_HINT}) or set {KERNEL_ENV}")
    return fields


def _busybox_version() -> str:
    out = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", "busybox-static"], check=False)
    status, _, version = out.stdout.partition("|")
    if out.returncode or not status.startswith("ii") or not BUSYBOX.is_file():
        raise ImageError(f"busybox-static not installed: apt-get install busybox-static ({SETUP_HINT})")
    return version.strip()


# ---------- kernel package ----------

def _kernel_deb(debs: Path, inputs: _Inputs, progress: Callable[[str], None]) -> Path:
    """The kernel .deb, downloaded once into debs/ and reused; older ones are dropped."""
    name = f"{inputs.kernel_pkg}_{inputs.kernel_pkg_version.replace(':', '%3a')}_{inputs.arch}.deb"
    target = debs / name
    if target.is_file():
        return target
    debs.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {inputs.kernel_pkg} {inputs.kernel_pkg_version}")
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=debs) as tmp:
        _run(["apt-get", "download", f"{inputs.kernel_pkg}={inputs.kernel_pkg_version}"],
             f"apt-get download {inputs.kernel_pkg}", cwd=tmp,
             fix=f"check the package mirror is reachable and run apt-get update ({SETUP_HINT})")
        got = sorted(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise ImageError(f"apt-get download {inputs.kernel_pkg} left {len(got)} .deb files: retry, or clear {debs}")
        _check_deb(got[0], inputs)
        got[0].rename(target)
    for old in debs.glob("*.deb"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def _check_deb(deb: Path, inputs: _Inputs) -> None:
    out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], f"dpkg-deb -f {deb.name}").decode()
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    if (fields.get("Package"), fields.get("Version")) != (inputs.kernel_pkg, inputs.kernel_pkg_version):
        raise ImageError(f"downloaded {deb.name} is not {inputs.kernel_pkg} {inputs.kernel_pkg_version}: rerun apt-get update")


# ---------- build ----------

def _build(out: Path, deb: Path, inputs: _Inputs, key: str, progress: Callable[[str], None]) -> None:
    """Fill out/ with vmlinuz, initrd.img and VERSION; scratch work goes to out/work (removed)."""
    work = out / "work"
    pkgroot = work / "pkg"
    stage = work / "initramfs"
    pkgroot.mkdir(parents=True)
    progress(f"unpacking {deb.name}")
    _run(["dpkg-deb", "-x", str(deb), str(pkgroot)], f"dpkg-deb -x {deb.name}",
         fix=f"delete {deb} so it is downloaded again")
    vmlinuz, kver = _find_kernel(pkgroot)
    moddir = _find_moddir(pkgroot, kver)

    progress("compiling agent")
    agent = work / "agent"
    _compile_agent(agent)

    progress("packing initramfs")
    order = module_order(moddir, MODULES)
    _stage(stage, agent, moddir, order)
    (out / "initrd.img").write_bytes(gzip.compress(_cpio(stage), compresslevel=6, mtime=0))
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    (out / "vmlinuz").chmod(0o644)
    (out / "initrd.img").chmod(0o644)
    (out / "VERSION").write_text(
        f"key={key}\nkernel_version={kver}\nkernel_pkg={inputs.kernel_pkg}\n"
        f"kernel_pkg_version={inputs.kernel_pkg_version}\nbusybox_static={inputs.busybox_version}\n"
        f"builder={BUILDER_VERSION}\nmodules={' '.join(order)}\n")
    (out / "VERSION").chmod(0o644)
    shutil.rmtree(work)


def _find_kernel(pkgroot: Path) -> tuple[Path, str]:
    found = sorted((pkgroot / "boot").glob("vmlinuz-*"))
    if len(found) != 1:
        raise ImageError(f"kernel package has {len(found)} /boot/vmlinuz-* files: set {KERNEL_ENV} to a linux-image package")
    return found[0], found[0].name.removeprefix("vmlinuz-")


def _find_moddir(pkgroot: Path, kver: str) -> Path:
    for base in ("lib/modules", "usr/lib/modules"):  # newer packages ship under /usr
        if (pkgroot / base / kver).is_dir():
            return pkgroot / base / kver
    raise ImageError(f"kernel package has no modules for {kver}: set {KERNEL_ENV} to a linux-image package")


def agent_gcc_argv(out: Path) -> list[str]:
    """The one way the agent is compiled (the image build, and the tests that run it as a process)."""
    return ["gcc", "-O2", "-static", "-Wall", "-Wextra", "-pthread", "-o", str(out),
            *(str(src) for src in sorted(AGENT_DIR.glob("*.c")))]


def _agent_source() -> bytes:
    """Every agent source file, named, in one byte string: a change to any of them changes the image key."""
    return b"".join(path.name.encode() + b"\0" + _read(path) + b"\0"
                    for path in sorted([*AGENT_DIR.glob("*.c"), *AGENT_DIR.glob("*.h")]))


def _compile_agent(out: Path) -> None:
    if not shutil.which("gcc"):
        raise ImageError(f"gcc not found: install build-essential ({SETUP_HINT})")
    _run(agent_gcc_argv(out), "compiling the guest agent", fix=f"install build-essential and libc6-dev ({SETUP_HINT})")


def _stage(stage: Path, agent: Path, moddir: Path, order: list[str]) -> None:
    """Lay out the initramfs tree: busybox + applet links, /init, /agent, modules + order file."""
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "lib/modules"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUSYBOX, stage / "bin/busybox")
    for applet in APPLETS:
        (stage / "bin" / applet).symlink_to("busybox")
    shutil.copyfile(INIT_SRC, stage / "init")
    shutil.copyfile(agent, stage / "agent")
    for exe in ("bin/busybox", "init", "agent"):
        (stage / exe).chmod(0o755)
    files = module_files(moddir)
    for name in order:
        (stage / "lib/modules" / f"{name}.ko").write_bytes(ko_bytes(files[name]))
    (stage / "lib/modules/order").write_text("".join(f"{name}.ko\n" for name in order))


def _cpio(stage: Path) -> bytes:
    if not shutil.which("cpio"):
        raise ImageError(f"cpio not found: apt-get install cpio ({SETUP_HINT})")
    paths = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
    return _run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-0"], "cpio",
                cwd=stage, input="\0".join(paths).encode())


# ---------- cache ----------

def _complete(final: Path) -> bool:
    return all((final / f).is_file() for f in ("vmlinuz", "initrd.img", "VERSION"))


def _load(final: Path, key: str) -> GuestImage:
    fields = dict(line.split("=", 1) for line in _read_lines(final / "VERSION") if "=" in line)
    return GuestImage(kernel=final / "vmlinuz", initrd=final / "initrd.img", key=key,
                      kernel_version=fields.get("kernel_version", ""))


def _sweep_partial(cache_dir: Path) -> None:
    """Remove leftovers of builds that died; safe because we hold the lock."""
    for stale in cache_dir.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)


# ---------- helpers ----------

def _run(argv: list[str], what: str, fix: str = "", cwd: str | Path | None = None,
         input: bytes | None = None) -> bytes:
    """Run argv and return stdout; failure becomes a one-line ImageError (apt's warnings are noise here)."""
    proc = run(argv, check=False, cwd=cwd, input=input, text=False, env=dict(os.environ, LC_ALL="C"),
               error=ImageError, what=what, fix=fix, timeout=1800)
    if proc.returncode:
        lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("W: ")]
        errors = [ln for ln in lines if re.search(r"\berror\b|^E:", ln)]
        detail = errors[0] if errors else lines[-1] if lines else f"exit status {proc.returncode}"
        raise ImageError(f"{what} failed: {detail.strip()[:300]}" + (f"; {fix}" if fix else ""))
    return proc.stdout


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}; reinstall the lab package") from None


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or find cached) the lab guest image.")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        image = ensure_image(args.cache_dir, progress=lambda msg: print(msg, file=sys.stderr))
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"kernel: {image.kernel}\ninitrd: {image.initrd}\nkey: {image.key}\n"
          f"kernel_version: {image.kernel_version}\nseconds: {time.monotonic() - start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

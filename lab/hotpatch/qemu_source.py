"""The source of the installed QEMU, from the distro (Debian): which source package and
version the installed `qemu-system-x86` was built from (dpkg), a deb-src entry for apt
when it has none (in a file of its own, mirroring `debian.sources`; the distro's files
untouched), the packages a QEMU build needs, and `apt-get source` + `dpkg-source -x`
into a tree. A hot patch loads only into the exact binary it was built against, so the
lab rebuilds QEMU from exactly this source.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lab.errors import HotpatchError
from lab.hotpatch.progress import Progress, quiet
from lab.util.files import atomic_write_text
from lab.util.process import run

BINARY_PACKAGE = "qemu-system-x86"
DEB_SRC_FILE = Path("/etc/apt/sources.list.d/kvm-lab-deb-src.sources")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
BUILD_DEPS = ("build-essential", "ninja-build", "meson", "libglib2.0-dev", "libpixman-1-dev", "libfdt-dev",
              "flex", "bison", "python3-venv", "dpkg-dev", "pkg-config")
NOT_DEBIAN = ("building QEMU from its source package is implemented for Debian (openEuler: rpmbuild the qemu SRPM, "
              "then set hotpatch.emulator)")


@dataclass(frozen=True)
class QemuSource:
    package: str  # source package name (qemu)
    version: str  # source version, epoch included (1:7.2+dfsg-7+deb12u18)
    installed: str  # the installed binary package's version (may carry a binNMU suffix, +b3)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]", "_", self.version.replace(":", "_"))


def installed_source(package: str = BINARY_PACKAGE) -> QemuSource:
    """Source package and version the installed QEMU binary package was built from (dpkg)."""
    proc = run(["dpkg-query", "-W", "-f=${source:Package}\t${source:Version}\t${Version}", package], check=False,
               timeout=30, error=HotpatchError, fix=NOT_DEBIAN)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HotpatchError(f"{package} is not installed: apt-get install {package} "
                            "(its source version is what gets built)")
    src, src_version, version = proc.stdout.strip().split("\t")
    return QemuSource(src or "qemu", src_version or version, version)


def has_deb_src(sources_dir: Path = APT_SOURCES_DIR, sources_list: Path = Path("/etc/apt/sources.list")) -> bool:
    """True when apt has any deb-src entry (one-line or deb822 format)."""
    texts = []
    if sources_list.exists():
        texts.append(sources_list.read_text(errors="replace"))
    for path in sorted(sources_dir.glob("*.list")) + sorted(sources_dir.glob("*.sources")):
        texts.append(path.read_text(errors="replace"))
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("deb-src "):
                return True
            if line.lower().startswith("types:") and "deb-src" in line.split(":", 1)[1].split():
                return True
    return False


def deb_src_stanzas(debian_sources: str) -> str:
    """`Types: deb-src` stanzas mirroring every `Types: deb` stanza's URIs/Suites/Components/Signed-By (deb822)."""
    out = []
    for block in re.split(r"\n\s*\n", debian_sources.strip()):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        lines = ["Types: deb-src"]
        for key, name in (("uris", "URIs"), ("suites", "Suites"), ("components", "Components"),
                          ("signed-by", "Signed-By")):
            if key in fields:
                lines.append(f"{name}: {fields[key]}")
        out.append("\n".join(lines))
    return "\n\n".join(out) + ("\n" if out else "")


def ensure_deb_src(progress: Progress = quiet, sources_dir: Path = APT_SOURCES_DIR) -> None:
    """Give apt a deb-src entry (in a separate file, the distro's files untouched) and refresh its lists."""
    if has_deb_src(sources_dir):
        return
    debian = sources_dir / "debian.sources"
    if not debian.exists():
        raise HotpatchError(f"no deb-src entry and no {debian} to mirror: add a deb-src line for your mirror, "
                            "then run again")
    stanzas = deb_src_stanzas(debian.read_text())
    if not stanzas:
        raise HotpatchError(f"{debian}: no enabled `Types: deb` stanza to mirror as deb-src; add one by hand")
    progress(f"apt has no deb-src entry: writing {DEB_SRC_FILE} (mirrors {debian}) and running apt-get update")
    atomic_write_text(DEB_SRC_FILE, "# Added by kvm-acceptance (lab/hotpatch/qemu_source.py) so `apt-get source "
                      "qemu` works; safe to delete.\n" + stanzas)
    apt(["apt-get", "update", "-qq"], "apt-get update", timeout=600)


def apt(argv: Sequence[str], what: str, timeout: float, cwd: Path | None = None) -> str:
    """An apt/dpkg command, non-interactive; a failure is one HotpatchError line, `<what> failed: <why>`."""
    fix = "check the network to the mirror" if argv[0] == "apt-get" else ""  # apt-get is what reaches the mirror
    proc = run(argv, timeout=timeout, cwd=cwd, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
               error=HotpatchError, what=f"{what} failed", fix=fix)
    return proc.stdout


def missing_packages(packages: Sequence[str]) -> list[str]:
    """Which of `packages` dpkg does not list as installed."""
    missing = []
    for pkg in packages:
        proc = run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False, timeout=30, error=HotpatchError,
                   fix=NOT_DEBIAN)
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def ensure_build_deps(progress: Progress = quiet) -> None:
    missing = missing_packages(BUILD_DEPS)
    if missing:
        progress(f"installing QEMU build dependencies: {' '.join(missing)}")
        apt(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            "apt-get install " + " ".join(missing), timeout=1200)


def fetch_source(source: QemuSource, dest: Path, progress: Progress = quiet) -> Path:
    """`apt-get source --download-only`, then dpkg-source -x into dest/src; returns the tree."""
    ensure_deb_src(progress)
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"fetching source package {source.package}={source.version} "
             f"(installed {BINARY_PACKAGE} {source.installed})")
    apt(["apt-get", "source", "--download-only", "-qq", f"{source.package}={source.version}"],
        f"apt-get source {source.package}={source.version}", timeout=1200, cwd=dest)
    dscs = sorted(dest.glob(f"{source.package}_*.dsc"))
    if not dscs:
        raise HotpatchError(f"apt-get source {source.package}={source.version} left no .dsc in {dest}")
    tree = dest / "src"
    if tree.exists():
        shutil.rmtree(tree)
    progress("unpacking the source package (upstream tarball + Debian patches)")
    apt(["dpkg-source", "--no-check", "-x", str(dscs[0]), str(tree)], "dpkg-source -x", timeout=600)
    return tree


def disable_edk2_unpacking(srcdir: Path) -> bool:
    """The dfsg tarball has no edk2 blobs; stop meson from unpacking them for x86_64. True if changed."""
    meson = srcdir / "meson.build"
    text = meson.read_text()
    new = re.sub(r"unpack_edk2_blobs = bzip2\.found\(\)",
                 "unpack_edk2_blobs = false  # kvm-acceptance: dfsg has no edk2 blobs", text)
    if new == text:
        return False
    meson.write_text(new)
    return True

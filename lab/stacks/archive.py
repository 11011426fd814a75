"""A distro archive suite as a stack source: a private apt index, `apt-get download`, `dpkg-deb -x`.

Nothing system-wide changes: apt reads a sources file, a lists directory and a package cache
of the lab's own (`-o Dir::Etc::sourcelist=...` and friends, under the stacks cache), and
installs nothing; the packages are unpacked into a tree in the cache. The mirror is the one
apt already uses for the distribution (from `apt-cache policy`), unless lab.yaml names one.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab.errors import StackError
from lab.stacks.cache import Entry, StackCache, write_manifest
from lab.util.files import atomic_write_text
from lab.util.process import run, stream

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MULTIARCH = "x86_64-linux-gnu"  # QEMU here is qemu-system-x86 on an amd64 machine


@dataclass(frozen=True)
class Component:
    """One half of a stack: the packages that make it (built from one source, one version)."""
    name: str  # qemu | libvirt
    packages: tuple[str, ...]  # the first names the version
    binary: str  # must be in the tree once unpacked
    modules: str  # a directory the tree replaces whole on the host (left-over modules of another version break it)


QEMU = Component("qemu", ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "qemu-block-extra"),
                 "usr/bin/qemu-system-x86_64", f"usr/lib/{MULTIARCH}/qemu")
# libvirt 11 splits its drivers into packages: the daemon loads every module of its directory.
LIBVIRT = Component("libvirt", (
    "libvirt-daemon", "libvirt0", "libvirt-common", "libvirt-daemon-common", "libvirt-daemon-log",
    "libvirt-daemon-lock", "libvirt-clients", "libvirt-daemon-driver-qemu", "libvirt-daemon-driver-network",
    "libvirt-daemon-driver-storage", "libvirt-daemon-driver-storage-disk", "libvirt-daemon-driver-interface",
    "libvirt-daemon-driver-nodedev", "libvirt-daemon-driver-nwfilter", "libvirt-daemon-driver-secret"),
    "usr/sbin/libvirtd", f"usr/lib/{MULTIARCH}/libvirt")
COMPONENTS = {c.name: c for c in (QEMU, LIBVIRT)}


def upstream(version: str) -> str:
    """1:10.0.2+ds-2+deb13u1~bpo12+1 -> 10.0.2; 11.3.0-2~bpo12+1 -> 11.3.0."""
    return re.split(r"[+~-]", version.split(":", 1)[-1], maxsplit=1)[0]


def matches(requested: str, version: str) -> bool:
    """The exact package version, or its upstream version (10.0.2), or a prefix of it (10.0)."""
    up = upstream(version)
    return requested in (version, up) or up.startswith(requested + ".")


def default_mirror(suite: str) -> str:
    """The mirror apt already uses for the suite's distribution (bookworm for bookworm-backports)."""
    base = suite.split("-", 1)[0]
    out = run(["apt-cache", "policy"], error=StackError, fix="apt is needed for archive stacks").stdout
    uri = ""
    for line in out.splitlines():
        m = re.match(r"\s*\d+\s+(\S+://\S+)\s+(\S+)/main\s", line)
        if m:
            uri = m[1] if m[2] == base else ""  # its release line follows; that says whose suite it is
        elif "release" in line and "o=Debian" in line and f"n={base}," in line and uri:
            return uri.rstrip("/")
    raise StackError(f"apt has no Debian {base} source to take the mirror from; "
                     f"name one in lab.yaml (stacks.<name>.mirror: http://deb.debian.org/debian)")


class PrivateApt:
    """apt with its own sources, lists and package cache: reads the suite, installs nothing."""

    def __init__(self, cache: StackCache, suite: str, mirror: str, kind: str = "deb"):
        self.suite, self.mirror, self.kind = suite, mirror.rstrip("/"), kind  # kind: deb | deb-src
        self.dir = cache.apt_dir(f"{suite}-{kind}-{hashlib.sha256(self.mirror.encode()).hexdigest()[:8]}")
        self.where = f"{suite} at {self.mirror}"

    def options(self) -> list[str]:
        d = self.dir
        return ["-o", f"Dir::Etc::sourcelist={d / 'sources.list'}", "-o", f"Dir::Etc::sourceparts={d / 'parts'}",
                "-o", f"Dir::State::Lists={d / 'lists'}", "-o", f"Dir::Cache={d / 'cache'}",
                "-o", "APT::Sandbox::User=root", "-o", "Acquire::Retries=1", "-o", "Acquire::http::Timeout=20"]

    def update(self, progress: Callable[[str], None]) -> None:
        if not KEYRING.is_file():
            raise StackError(f"{KEYRING} not found: install debian-archive-keyring to read {self.where}")
        for sub in ("parts", "lists/partial", "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        line = f"{self.kind} [signed-by={KEYRING}] {self.mirror} {self.suite} main\n"
        atomic_write_text(self.dir / "sources.list", line)
        progress(f"reading {self.where}")
        run(["apt-get", *self.options(), "--error-on=any", "update"], timeout=180, error=StackError,
            what=f"apt-get update of {self.where}", fix="check the mirror URL and that it is reachable",
            noise=lambda ln: ln.startswith(("W:", "Reading", "Hit:", "Get:", "Ign:"))
            or "index files failed to download" in ln)

    def versions(self, package: str) -> list[str]:
        """Versions of `package` in the suite, highest first."""
        out = run(["apt-cache", *self.options(), "madison", package], check=False, error=StackError).stdout
        found = [parts[1].strip() for parts in (ln.split("|") for ln in out.splitlines())
                 if len(parts) >= 3 and f" {self.suite}/" in parts[2]]
        return found

    def download(self, packages: list[str], into: Path, progress: Callable[[str], None]) -> list[Path]:
        into.mkdir(parents=True, exist_ok=True)
        for line in stream(["apt-get", *self.options(), "download", *packages], cwd=into, error=StackError,
                           what=f"apt-get download from {self.where}"):
            if line.startswith(("Get:", "Fetched", "E:")):
                progress(line)
        return sorted(into.glob("*.deb"))


def read_suite(cache: StackCache, name: str, suite: str, mirror: str | None,
               progress: Callable[[str], None], kind: str = "deb") -> PrivateApt:
    """The stack's suite (binary, or deb-src for a build) read into the cache's private index; one line
    naming the stack when it cannot be."""
    try:
        apt = PrivateApt(cache, suite, mirror or default_mirror(suite), kind=kind)
        apt.update(progress)
    except StackError as exc:
        raise StackError(f"stacks.{name}: {exc}") from None
    return apt


def resolve(apt: PrivateApt, component: Component, requested: str, field: str) -> str:
    """The exact version of the component's packages that `requested` names, or one line saying what is there."""
    versions = apt.versions(component.packages[0])
    chosen = next((v for v in versions if matches(requested, v)), None)
    if chosen is None:
        there = ", ".join(versions) or "none"
        raise StackError(f"{field}: {requested} is not in {apt.where} ({component.packages[0]} there: {there}); "
                         "name one of those versions")
    for package in component.packages[1:]:
        if chosen not in apt.versions(package):
            raise StackError(f"{field}: {package} {chosen} is not in {apt.where}; the stack needs all of "
                             f"{', '.join(component.packages)} at one version")
    return chosen


def cached(cache: StackCache, component: Component, requested: str, suite: str) -> Entry | None:
    """The highest cached tree of this suite that the request names (no network)."""
    hits = [e for e in cache.entries(component.name)
            if e.manifest.get("suite") == suite and matches(requested, e.manifest.get("version", ""))]
    return max(hits, key=lambda e: e.manifest["version"], default=None)


def fetch(cache: StackCache, apt: PrivateApt, component: Component, version: str,
          progress: Callable[[str], None]) -> Entry:
    """Download and unpack the component at `version` into a new cache entry, whole or not at all."""
    with cache.installing(component.name, version) as partial:
        debs = apt.download([f"{p}={version}" for p in component.packages], partial / "debs", progress)
        if len(debs) != len(component.packages):
            raise StackError(f"apt-get download from {apt.where} gave {len(debs)} of {len(component.packages)} "
                             f"packages of {component.name} {version}; nothing was installed, retry")
        tree = partial / "tree"
        for deb in debs:
            progress(f"unpacking {deb.name}")
            run(["dpkg-deb", "-x", deb, tree], timeout=300, error=StackError, what=f"dpkg-deb -x {deb.name}")
        if not (tree / component.binary).is_file():
            raise StackError(f"{component.name} {version}: /{component.binary} is not in the unpacked packages")
        check_libraries(tree, component)
        shutil.rmtree(partial / "debs")
        manifest = {"component": component.name, "version": version, "upstream": upstream(version),
                    "suite": apt.suite, "mirror": apt.mirror,
                    "packages": {d.name.split("_")[0]: version for d in debs}}
        write_manifest(partial, manifest)
    return next(e for e in cache.entries(component.name) if e.manifest["version"] == version)


def check_libraries(tree: Path, component: Component) -> None:
    """Every library the binary needs is on this machine or in the tree (`ldd`), or one line naming it."""
    out = run(["ldd", tree / component.binary], check=False, error=StackError,
              env={"LD_LIBRARY_PATH": str(tree / "usr" / "lib" / MULTIARCH), "PATH": "/usr/bin:/bin"}).stdout
    missing = [ln.split()[0] for ln in out.splitlines() if "not found" in ln]
    if missing:
        raise StackError(f"{component.name}: /{component.binary} needs {', '.join(missing)}, missing on this "
                         "machine; this suite's packages are not built for this distribution")

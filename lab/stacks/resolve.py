"""lab.yaml's stacks turned into records (lab.runtime.state.StackRecord): fetched, cached, with exact versions.

One function per source; `ensure_stack` picks it. Each error is one line that starts with the
stack's field in lab.yaml (``stacks.backports.qemu: 10.0.9 is not in bookworm-backports ...``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from lab.config.lab import LabConfig
from lab.config.stacks import SYSTEM, StackSpec, stack_spec
from lab.errors import StackError
from lab.runtime.state import StackRecord
from lab.stacks.archive import (COMPONENTS, LIBVIRT, QEMU, PrivateApt, cached, fetch, read_suite, resolve,
                                upstream)
from lab.stacks.build import build_stack
from lab.stacks.git_build import git_stack
from lab.stacks.cache import Entry, StackCache
from lab.util.process import run

Progress = Callable[[str], None]
SYSTEM_PACKAGES = {"qemu": QEMU.packages[0], "libvirt": LIBVIRT.packages[0]}


def ensure_stacks(config: LabConfig, progress: Progress, cache: StackCache | None = None) -> dict[str, StackRecord]:
    """The record of every stack a host of the lab runs, fetching what the cache lacks."""
    names = dict.fromkeys(h.stack for h in config.hosts)
    return {name: ensure_stack(name, stack_spec(name, config.stacks), progress, cache) for name in names}


def ensure_stack(name: str, spec: StackSpec, progress: Progress, cache: StackCache | None = None) -> StackRecord:
    cache = cache or StackCache()
    if spec.source == SYSTEM:
        return system_stack(name)
    if spec.source == "archive":
        return archive_stack(name, spec, cache, progress)
    if spec.source == "path":
        return path_stack(name, spec)
    if spec.source == "git":
        return git_stack(name, spec, cache, progress)
    return build_stack(name, spec, cache, progress)


def installed_version(package: str) -> str:
    """The installed package's exact version, or "" where dpkg does not know it (openEuler; a QEMU from
    source): then the versions are what the host reports, and `up` checks none."""
    try:
        out = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", package], check=False, error=StackError)
    except StackError:  # no dpkg on this machine
        return ""
    status, _, version = out.stdout.partition("|")
    return version.strip() if out.returncode == 0 and status.startswith("ii") else ""


def system_stack(name: str = SYSTEM) -> StackRecord:
    """The installed packages: nothing to mount."""
    qemu, libvirt = (installed_version(p) for p in SYSTEM_PACKAGES.values())
    return StackRecord(name=name, source=SYSTEM, qemu=qemu, libvirt=libvirt, qemu_upstream=upstream(qemu),
                       libvirt_upstream=upstream(libvirt), origin="the installed packages")


def archive_stack(name: str, spec: StackSpec, cache: StackCache, progress: Progress) -> StackRecord:
    suite = spec.archive_suite
    entries: dict[str, Entry] = {}
    apt: PrivateApt | None = None
    with cache.locked(progress):
        for component in COMPONENTS.values():
            requested = getattr(spec, component.name)
            if requested is None:
                continue
            entry = cached(cache, component, requested, suite)
            if entry is None:
                if apt is None:
                    apt = read_suite(cache, name, suite, spec.mirror, progress)
                version = resolve(apt, component, requested, f"stacks.{name}.{component.name}")
                progress(f"stack {name}: fetching {component.name} {version} from {apt.where}")
                try:
                    entry = fetch(cache, apt, component, version, progress)
                except StackError as exc:
                    raise StackError(f"stacks.{name}: {exc}; nothing was installed") from None
            progress(f"stack {name}: {component.name} {entry.manifest['version']} ({entry.dir})")
            entries[component.name] = entry
    versions = {c: (e.manifest["version"] if (e := entries.get(c)) else installed_version(p))
                for c, p in SYSTEM_PACKAGES.items()}
    return StackRecord(
        name=name, source="archive", qemu=versions["qemu"], libvirt=versions["libvirt"],
        qemu_upstream=upstream(versions["qemu"]), libvirt_upstream=upstream(versions["libvirt"]),
        layers=[str(e.usr) for e in entries.values()],
        binds={str(e.dir / "tree" / COMPONENTS[c].modules): "/" + COMPONENTS[c].modules for c, e in entries.items()},
        origin=f"{suite} at {next(iter(entries.values())).manifest['mirror']}")


def path_stack(name: str, spec: StackSpec) -> StackRecord:
    """An existing tree (usr/ inside): run as it is; the versions lab.yaml names are checked once it runs."""
    usr = Path(spec.path) / "usr"
    if not usr.is_dir():
        raise StackError(f"stacks.{name}.path: {usr} is not a directory (the tree needs usr/ inside, "
                         "as `dpkg -x` or `make install DESTDIR=TREE` make it)")
    binds = {str(Path(spec.path) / c.modules): "/" + c.modules for c in COMPONENTS.values()
             if (Path(spec.path) / c.modules).is_dir()}
    qemu = spec.qemu or tree_qemu_version(usr) or ""
    return StackRecord(name=name, source="path", qemu=qemu, libvirt=spec.libvirt or "",
                       qemu_upstream=upstream(qemu), libvirt_upstream=spec.libvirt or "",
                       layers=[str(usr)], binds=binds, origin=f"the tree at {spec.path}")


def tree_qemu_version(usr: Path) -> str:
    """What the tree's QEMU says it is (`QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)`), or ""."""
    binary = usr / "bin" / "qemu-system-x86_64"
    if not binary.is_file():
        return ""
    out = run([binary, "--version"], check=False, timeout=20, error=StackError).stdout
    m = re.search(r"version (\S+)(?: \((?:Debian )?([^)]+)\))?", out)
    return (m[2] or m[1]) if m else ""

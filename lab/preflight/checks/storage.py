"""Storage checks: the guest's disks are the same storage on both hosts (or will be copied), their
directories exist with a filesystem, QEMU can write there, and a copy fits on the destination.

storage-mode is the one check that writes: a marker file on the source, read on
the destination and removed again, because nothing else proves two paths are
the same storage (or, with storage: local, two storages). A planned guest's
disk is looked at as its directory: the lab's storage path.
"""
from __future__ import annotations

import json
import re
import shlex
import uuid

from lab.errors import LabError
from lab.preflight.checks.probes import disks, qemu_conf, sh, tcp_probe
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result
from lab.runtime.hosts import Host


def _marker(ctx: PreflightContext, directory: str, disk_path: str | None = None) -> tuple[str, bool]:
    """A marker written in `directory` on the source, looked for on the destination, removed again.

    Returns (problem on the source or "", seen on the destination). With `disk_path`, the source
    must have that disk (an existing guest's), else writing is not tried.
    """
    marker = f"{directory}/.preflight-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    need = f"test -e {shlex.quote(disk_path)} && " if disk_path else ""
    wrote = sh(ctx.src, f"{need}echo {token} > {shlex.quote(marker)}")
    try:
        seen = sh(ctx.dst, f"cat {shlex.quote(marker)} 2>/dev/null").stdout.strip() == token
    finally:
        sh(ctx.src, f"rm -f {shlex.quote(marker)}")
    if wrote.returncode == 0:
        return "", seen
    if disk_path:
        return f"{disk_path} missing on {ctx.src.name}", seen
    err = (wrote.stderr.strip().splitlines() or [f"exit {wrote.returncode}"])[-1]
    return f"cannot write a marker in {directory} on {ctx.src.name}: {err}", seen


def _planned_local(ctx: PreflightContext, directory: str) -> CheckResult:
    """storage: local copies the disk: the path must be each host's own, or the copy lands on the original."""
    problem, seen = _marker(ctx, directory)
    if problem:
        return result("storage-mode", FAIL, problem, f"create {directory} on {ctx.src.name}, writable by root")
    if seen:
        return result("storage-mode", FAIL, f"storage: local, but {directory} is one storage on {ctx.src.name} and "
                      f"{ctx.dst.name} (a marker written on {ctx.src.name} is seen on {ctx.dst.name}): "
                      "a copied disk would overwrite its source",
                      "give each host a directory of its own at that path, or set storage: shared (nothing copied)")
    return result("storage-mode", PASS, f"non-shared: {directory} is each host's own (a marker written on "
                  f"{ctx.src.name} is not seen on {ctx.dst.name}); the planned disk will be copied")


@check("storage-mode", "storage")
def storage_mode(ctx: PreflightContext) -> CheckResult:
    writable = [d for d in disks(ctx) if not d.readonly]
    if not writable:
        return result("storage-mode", PASS, "no writable disks: nothing to share or copy")
    if ctx.storage_mode == "local":
        if ctx.plan is not None:
            return _planned_local(ctx, writable[0].directory)
        return result("storage-mode", PASS, f"non-shared: {len(writable)} disk(s) will be copied (copy-storage)")
    problems, kinds = [], set()
    for d in writable:
        if d.type == "network" and d.protocol == "nfs":
            # Both hypervisors reach the same NFS export (QEMU's NFS driver): shared by construction.
            for host in (ctx.src, ctx.dst):
                if tcp_probe(host, d.server, 2049) != "open":
                    problems.append(f"NFS server {d.server}:2049 not reachable from {host.name}")
            kinds.add(f"NFS (NFSv3 export on {d.server}, QEMU NFS driver)")
            continue
        if d.type == "network":
            kinds.add(f"network ({d.protocol})")
            continue
        problem, seen = _marker(ctx, d.directory, None if d.planned else d.path)
        exists = d.planned or sh(ctx.dst, f"test -e {shlex.quote(d.path)}").returncode == 0
        if problem:
            problems.append(problem)
        elif not exists:
            problems.append(f"{d.path} does not exist on {ctx.dst.name}")
        elif not seen:
            problems.append(f"{d.directory if d.planned else d.path}: a marker written on {ctx.src.name} "
                            f"is not seen on {ctx.dst.name}")
        kinds.add(f"shared directory {d.directory}" if d.planned else "shared file")
    if problems:
        return result("storage-mode", FAIL, "shared storage expected, but " + "; ".join(problems),
                      "mount the same storage at the same path on both hosts, or migrate with storage: local (copy)")
    how = " (a marker written on the source is read on the destination)" if ctx.plan is not None else ""
    return result("storage-mode", PASS, f"shared: {', '.join(sorted(kinds))}, the same storage on both hosts{how}")


@check("storage-filesystem", "storage")
def storage_filesystem(ctx: PreflightContext) -> CheckResult:
    seen = []
    for d in disks(ctx):
        if d.type == "network":
            seen.append(f"{d.target}: {d.protocol} (network disk)")
            continue
        for host in (ctx.src, ctx.dst):
            fstype = sh(host, f"stat -f -c %T {shlex.quote(d.directory)}").stdout.strip() or "missing"
            seen.append(f"{host.name} {d.directory}: {fstype}")
    if any(s.endswith("missing") for s in seen):
        return result("storage-filesystem", FAIL, "; ".join(seen), "create the disk directory on both hosts")
    return result("storage-filesystem", PASS, "; ".join(seen) or "no disks")


def _qemu_user(host: Host) -> str:
    found = re.findall(r'^\s*user\s*=\s*"([^"]+)"', qemu_conf(host), re.M)
    return found[-1] if found else "libvirt-qemu"  # Debian's default when qemu.conf does not say


@check("storage-writable", "storage")
def storage_writable(ctx: PreflightContext) -> CheckResult:
    problems = []
    for d in disks(ctx):
        if d.type == "network" or d.readonly:
            continue
        host = ctx.dst
        user = _qemu_user(host)
        proc = sh(host, f"runuser -u {shlex.quote(user)} -- test -w {shlex.quote(d.directory)}")
        if proc.returncode != 0:
            problems.append(f"{d.directory} on {host.name} is not writable by QEMU's user {user}")
    if problems:
        return result("storage-writable", FAIL, "; ".join(problems), "fix ownership/permissions (or SELinux virt_use_nfs)")
    return result("storage-writable", PASS, f"disk directories writable by QEMU on {ctx.dst.name}")


def _free_bytes(host: Host, directory: str) -> int:
    proc = sh(host, f"df -B1 --output=avail {shlex.quote(directory)} | tail -1")
    text = proc.stdout.strip()
    if proc.returncode != 0 or not text.isdigit():
        err = (proc.stderr.strip().splitlines() or [text or "no output"])[-1]
        raise LabError(f"cannot read the free space of {directory} on {host.name}: {err}")
    return int(text)


@check("destination-room", "storage")
def destination_room(ctx: PreflightContext) -> CheckResult:
    """Room for what lands on the destination's storage: a copy of the disks, or the planned guest's new disk."""
    if ctx.plan is not None:
        # A qcow2 disk may grow to its virtual size; on shared storage it is made there once, with storage: local
        # it is copied to the destination's own directory.
        need, directory = ctx.plan.disk_mib << 20, ctx.plan.storage_path
        free = _free_bytes(ctx.dst, directory)
        where = "its copy" if ctx.storage_mode == "local" else "shared storage"
        if free < need:
            return result("destination-room", FAIL, f"{ctx.dst.name}:{directory} has {free >> 20} MiB free, the "
                          f"planned disk needs {need >> 20} MiB ({where})", f"free space on {ctx.dst.name} or plan a "
                          "smaller disk (--disk)")
        return result("destination-room", PASS, f"{free >> 20} MiB free on {ctx.dst.name}:{directory}, the planned "
                      f"disk needs {need >> 20} MiB ({where})")
    if ctx.storage_mode != "local":
        return result("destination-room", PASS, "shared storage: nothing is copied")
    need, directory = 0, None
    for d in disks(ctx):
        if d.type != "file" or d.readonly:
            continue
        info = json.loads(sh(ctx.src, f"qemu-img info -U --output=json {shlex.quote(d.path)}").stdout or "{}")
        if "virtual-size" not in info:
            raise LabError(f"qemu-img could not read the size of {d.path} on {ctx.src.name}")
        need += int(info["virtual-size"])  # a copy may grow to the virtual size on the destination
        directory = d.directory
    if not directory:
        return result("destination-room", PASS, "no file disks to copy")
    free = _free_bytes(ctx.dst, directory)
    if free < need:
        return result("destination-room", FAIL, f"{ctx.dst.name}:{directory} has {free >> 20} MiB free, "
                      f"disks need {need >> 20} MiB", f"free space on {ctx.dst.name}")
    return result("destination-room", PASS, f"{free >> 20} MiB free on {ctx.dst.name}, disks need {need >> 20} MiB")

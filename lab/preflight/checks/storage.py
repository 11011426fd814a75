"""Storage checks: the guest's disks are the same storage on both hosts (or will be copied), their
directories exist with a filesystem, QEMU can write there, and a copy fits on the destination.

storage-mode is the one check that writes: a marker file on the source, read on
the destination and removed again, because nothing else proves two paths are
the same storage.
"""
from __future__ import annotations

import json
import re
import shlex
import uuid

from lab.preflight.checks.probes import disks, qemu_conf, sh, tcp_probe
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result
from lab.runtime.hosts import Host


@check("storage-mode", "storage", needs_guest=True)
def storage_mode(ctx: PreflightContext) -> CheckResult:
    writable = [d for d in disks(ctx) if not d.readonly]
    if not writable:
        return result("storage-mode", PASS, "no writable disks: nothing to share or copy")
    if ctx.storage_mode == "local":
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
        marker = f"{d.directory}/.preflight-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        wrote = sh(ctx.src, f"test -e {shlex.quote(d.path)} && echo {token} > {marker}")
        try:
            exists = sh(ctx.dst, f"test -e {shlex.quote(d.path)} && echo yes").stdout.strip() == "yes"
            seen = sh(ctx.dst, f"cat {marker} 2>/dev/null").stdout.strip()
        finally:
            sh(ctx.src, f"rm -f {marker}")
        if wrote.returncode != 0:
            problems.append(f"{d.path} missing on {ctx.src.name}")
        elif not exists:
            problems.append(f"{d.path} does not exist on {ctx.dst.name}")
        elif seen != token:
            problems.append(f"{d.path}: a marker written on {ctx.src.name} is not seen on {ctx.dst.name}")
        kinds.add("shared file")
    if problems:
        return result("storage-mode", FAIL, "shared storage expected, but " + "; ".join(problems),
                      "mount the same storage at the same path on both hosts, or migrate with storage: local (copy)")
    return result("storage-mode", PASS, f"shared: {', '.join(sorted(kinds))}, the same storage on both hosts")


@check("storage-filesystem", "storage", needs_guest=True)
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


@check("storage-writable", "storage", needs_guest=True)
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


@check("destination-room", "storage", needs_guest=True)
def destination_room(ctx: PreflightContext) -> CheckResult:
    if ctx.storage_mode != "local":
        return result("destination-room", PASS, "shared storage: nothing is copied")
    need, directory = 0, None
    for d in disks(ctx):
        if d.type != "file" or d.readonly:
            continue
        info = json.loads(sh(ctx.src, f"qemu-img info -U --output=json {shlex.quote(d.path)}").stdout or "{}")
        need += int(info.get("virtual-size", 0))  # a copy may grow to the virtual size on the destination
        directory = d.directory
    if not directory:
        return result("destination-room", PASS, "no file disks to copy")
    free = int(sh(ctx.dst, f"df -B1 --output=avail {shlex.quote(directory)} | tail -1").stdout.strip() or 0)
    if free < need:
        return result("destination-room", FAIL, f"{ctx.dst.name}:{directory} has {free >> 20} MiB free, "
                      f"disks need {need >> 20} MiB", f"free space on {ctx.dst.name}")
    return result("destination-room", PASS, f"{free >> 20} MiB free on {ctx.dst.name}, disks need {need >> 20} MiB")

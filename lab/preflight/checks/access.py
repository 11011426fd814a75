"""Permission checks: SSH to both hosts, read-write libvirt on both, and the source's libvirtd reaching the destination."""
from __future__ import annotations

import shlex

import libvirt

from lab.errors import LabError
from lab.preflight.checks.probes import sh
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result


@check("ssh-access", "permission")
def ssh_access(ctx: PreflightContext) -> CheckResult:
    bad = []
    for host in (ctx.src, ctx.dst):
        proc = sh(host, "id -un", timeout=25)
        if proc.returncode != 0:
            bad.append(f"{host.name}: {(proc.stderr.strip().splitlines() or ['exit %d' % proc.returncode])[-1]}")
    if bad:
        return result("ssh-access", FAIL, "; ".join(bad), "fix the SSH key/user in the lab config; try `python -m lab ssh HOST`")
    return result("ssh-access", PASS, f"ssh as {ctx.src.ssh_user} works on {ctx.src.name} and {ctx.dst.name}")


@check("libvirt-read-write", "permission")
def libvirt_read_write(ctx: PreflightContext) -> CheckResult:
    """A migration job needs read-write libvirt on both ends; a read-only connection refuses write-class calls."""
    cpu = "<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>"
    bad = []
    for host in (ctx.src, ctx.dst):
        try:
            ctx.conn(host).compareHypervisorCPU(None, "x86_64", None, None, cpu, 0)
        except libvirt.libvirtError as exc:
            bad.append(f"{host.name}: {exc.get_error_message()}")
        except LabError as exc:
            bad.append(str(exc))
    if bad:
        return result("libvirt-read-write", FAIL, "; ".join(bad),
                      "connect read-write (no ?readonly / openReadOnly) as a user allowed to manage domains")
    return result("libvirt-read-write", PASS, f"read-write libvirt on {ctx.src.name} and {ctx.dst.name}")


@check("p2p-reach", "permission")
def p2p_reach(ctx: PreflightContext) -> CheckResult:
    """The source's libvirtd must open the destination's URI itself (peer-to-peer)."""
    proc = sh(ctx.src, f"virsh -c {shlex.quote(ctx.dst.libvirt_uri)} hostname", timeout=30)
    seen = proc.stdout.strip()
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return result("p2p-reach", FAIL, f"{ctx.src.name} cannot open {ctx.dst.libvirt_uri}: {err}",
                      f"give {ctx.src.name}'s root SSH access to {ctx.dst.name} (key + known_hosts) and check its libvirtd")
    return result("p2p-reach", PASS, f"{ctx.src.name} reaches {ctx.dst.name}'s libvirtd (hostname {seen})")

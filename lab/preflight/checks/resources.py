"""Destination resource checks: room for the guest's (or the planned guest's) memory and vCPUs on the destination."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from lab.errors import LabError
from lab.preflight.checks.probes import sh
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, WARN, CheckResult, check, result
from lab.runtime.hosts import Host

MEMORY_MARGIN_MIB = 128  # left for QEMU's own overhead beside the guest's RAM


def _available_mib(host: Host) -> int:
    """MemAvailable: what the kernel can give a new process without swapping (running guests already count)."""
    proc = sh(host, "awk '/^MemAvailable:/ {print $2}' /proc/meminfo")
    text = proc.stdout.strip()
    if proc.returncode != 0 or not text.isdigit():
        raise LabError(f"cannot read MemAvailable on {host.name}: {(proc.stderr.strip() or 'no output')[-200:]}")
    return int(text) // 1024


@check("destination-memory", "resources")
def destination_memory(ctx: PreflightContext) -> CheckResult:
    need_mib = ctx.plan.memory_mib if ctx.plan is not None else ctx.domain().maxMemory() // 1024
    who = "planned guest" if ctx.plan is not None else "guest"
    avail_mib = _available_mib(ctx.dst)
    if avail_mib < need_mib + MEMORY_MARGIN_MIB:
        return result("destination-memory", FAIL, f"{ctx.dst.name} has {avail_mib} MiB available, {who} needs "
                      f"{need_mib} MiB + {MEMORY_MARGIN_MIB} MiB margin", f"free memory on {ctx.dst.name} or pick another host")
    return result("destination-memory", PASS, f"{avail_mib} MiB available on {ctx.dst.name}, {who} needs {need_mib} MiB "
                  f"+ {MEMORY_MARGIN_MIB} MiB margin")


def _planned_vcpu_limit(ctx: PreflightContext) -> tuple[int, str]:
    """The destination's vCPU limit for the planned machine type and accelerator (libvirt's domain capabilities)."""
    plan = ctx.plan
    caps = ET.fromstring(ctx.conn(ctx.dst).getDomainCapabilities(None, "x86_64", plan.machine, plan.domain_type, 0))
    limit = caps.find("vcpu")
    if limit is None or not (limit.get("max") or "").isdigit():
        raise LabError(f"{ctx.dst.name}'s domain capabilities for {plan.machine} name no vCPU limit")
    return int(limit.get("max")), f"machine {plan.machine} under {plan.domain_type}"


@check("destination-vcpus", "resources")
def destination_vcpus(ctx: PreflightContext) -> CheckResult:
    if ctx.plan is not None:
        vcpus, who = ctx.plan.vcpus, "planned guest"
        limit, under = _planned_vcpu_limit(ctx)
    else:
        root = ctx.domain_xml()
        vcpus, who, virt = int(root.findtext("vcpu") or 1), "guest", root.get("type")
        limit, under = ctx.conn(ctx.dst).getMaxVcpus(virt), virt
    host_cpus = ctx.conn(ctx.dst).getInfo()[2]
    if vcpus > limit:
        return result("destination-vcpus", FAIL, f"{who} has {vcpus} vCPUs, {ctx.dst.name} allows {limit} for {under}",
                      "reduce the guest's vCPUs")
    if vcpus > host_cpus:
        return result("destination-vcpus", WARN, f"{who} has {vcpus} vCPUs, {ctx.dst.name} has {host_cpus} CPUs "
                      "(overcommit)", "expect slower guests and longer migrations")
    return result("destination-vcpus", PASS, f"{who}: {vcpus} vCPU(s) <= {host_cpus} CPUs on {ctx.dst.name} "
                  f"(limit {limit} for {under})")

"""Destination resource checks: room for the guest's memory and vCPUs on the destination."""
from __future__ import annotations

from lab.preflight.checks.probes import sh
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, WARN, CheckResult, check, result

MEMORY_MARGIN_MIB = 128  # left for QEMU's own overhead beside the guest's RAM


@check("destination-memory", "resources", needs_guest=True)
def destination_memory(ctx: PreflightContext) -> CheckResult:
    need_mib = ctx.domain().maxMemory() // 1024
    avail_kib = int(sh(ctx.dst, "awk '/^MemAvailable:/ {print $2}' /proc/meminfo").stdout.strip() or 0)
    avail_mib = avail_kib // 1024
    if avail_mib < need_mib + MEMORY_MARGIN_MIB:
        return result("destination-memory", FAIL, f"{ctx.dst.name} has {avail_mib} MiB available, guest needs "
                      f"{need_mib} MiB + {MEMORY_MARGIN_MIB} MiB margin", f"free memory on {ctx.dst.name} or pick another host")
    return result("destination-memory", PASS, f"{avail_mib} MiB available on {ctx.dst.name}, guest needs {need_mib} MiB")


@check("destination-vcpus", "resources", needs_guest=True)
def destination_vcpus(ctx: PreflightContext) -> CheckResult:
    root = ctx.domain_xml()
    vcpus = int(root.findtext("vcpu") or 1)
    virt = root.get("type")
    limit = ctx.conn(ctx.dst).getMaxVcpus(virt)
    host_cpus = ctx.conn(ctx.dst).getInfo()[2]
    if vcpus > limit:
        return result("destination-vcpus", FAIL, f"guest has {vcpus} vCPUs, {ctx.dst.name} allows {limit} for {virt}",
                      "reduce the guest's vCPUs")
    if vcpus > host_cpus:
        return result("destination-vcpus", WARN, f"guest has {vcpus} vCPUs, {ctx.dst.name} has {host_cpus} CPUs (overcommit)",
                      "expect slower guests and longer migrations")
    return result("destination-vcpus", PASS, f"{vcpus} vCPU(s) <= {host_cpus} CPUs on {ctx.dst.name}")

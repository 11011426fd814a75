"""Compatibility checks: the destination's QEMU and libvirt can run the guest as it is (its CPU model
and machine type) and are no older than the source's."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result


def _cpu_verdict(conn, root: ET.Element) -> int:
    cpu = root.find("cpu")
    if cpu is None:
        return libvirt.VIR_CPU_COMPARE_IDENTICAL  # no <cpu>: QEMU's default model, which every host runs
    return conn.compareHypervisorCPU(root.findtext("devices/emulator"), "x86_64",
                                     root.find("os/type").get("machine"), root.get("type"), ET.tostring(cpu, "unicode"), 0)


@check("cpu-model", "resources", needs_guest=True)
def cpu_model(ctx: PreflightContext) -> CheckResult:
    """The guest CPU must be usable on the destination, and back on the source for ping-pong."""
    root = ctx.domain_xml()
    model = root.findtext("cpu/model") or root.find("cpu").get("mode") if root.find("cpu") is not None else "default"
    refused = []
    for host in (ctx.dst, ctx.src):
        if _cpu_verdict(ctx.conn(host), root) == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            refused.append(host.name)
    if refused:
        return result("cpu-model", FAIL, f"CPU model {model} is refused by {', '.join(refused)} "
                      f"(libvirt hypervisor CPU comparison)", "use a CPU model both hosts can run (e.g. a baseline)")
    return result("cpu-model", PASS, f"CPU model {model} accepted by {ctx.dst.name} and back by {ctx.src.name}")


@check("machine-type", "resources", needs_guest=True)
def machine_type(ctx: PreflightContext) -> CheckResult:
    root = ctx.domain_xml()
    machine = root.find("os/type").get("machine")
    caps = ET.fromstring(ctx.conn(ctx.dst).getCapabilities())
    # A guest may name either an alias (pc) or the versioned type it stands for (pc-i440fx-7.2).
    known = {m.text for m in caps.iter("machine")} | {m.get("canonical") for m in caps.iter("machine")}
    if machine not in known:
        return result("machine-type", FAIL, f"machine type {machine} is not supported by {ctx.dst.name}'s QEMU",
                      "upgrade the destination's QEMU or use an older machine type")
    return result("machine-type", PASS, f"{machine} supported on {ctx.dst.name}")


def _version_text(number: int) -> str:
    """libvirt's packed version (major * 1e6 + minor * 1e3 + micro) as major.minor.micro."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


@check("versions", "resources")
def versions(ctx: PreflightContext) -> CheckResult:
    s, d = ctx.conn(ctx.src), ctx.conn(ctx.dst)
    fmt = _version_text
    problems = []
    if d.getVersion() < s.getVersion():
        problems.append(f"QEMU {fmt(d.getVersion())} on {ctx.dst.name} is older than {fmt(s.getVersion())}")
    if d.getLibVersion() < s.getLibVersion():
        problems.append(f"libvirt {fmt(d.getLibVersion())} on {ctx.dst.name} is older than {fmt(s.getLibVersion())}")
    if problems:
        return result("versions", FAIL, "; ".join(problems), "upgrade the destination first")
    return result("versions", PASS, f"QEMU {fmt(d.getVersion())}, libvirt {fmt(d.getLibVersion())} on "
                  f"{ctx.dst.name} >= {ctx.src.name}")

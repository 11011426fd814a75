"""Compatibility checks: the destination's QEMU and libvirt can run the guest as it is (its CPU model
and machine type, or the planned guest's on both hosts) and are no older than the source's."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import libvirt

from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result
from lab.runtime.hosts import Host


def _cpu_verdict(conn, root: ET.Element) -> int:
    cpu = root.find("cpu")
    if cpu is None:
        return libvirt.VIR_CPU_COMPARE_IDENTICAL  # no <cpu>: QEMU's default model, which every host runs
    return conn.compareHypervisorCPU(root.findtext("devices/emulator"), "x86_64",
                                     root.find("os/type").get("machine"), root.get("type"), ET.tostring(cpu, "unicode"), 0)


def _planned_cpu_refusal(ctx: PreflightContext, host: Host) -> str:
    """Why `host`'s hypervisor CPU refuses the planned model (as the lab's guests ask for it), or ""."""
    plan = ctx.plan
    cpu = f"<cpu mode='custom' match='exact'><model fallback='forbid'>{escape(plan.cpu_model)}</model></cpu>"
    try:
        verdict = ctx.conn(host).compareHypervisorCPU(None, "x86_64", plan.machine, plan.domain_type, cpu, 0)
    except libvirt.libvirtError as exc:  # an unknown model is an error, not a verdict
        return f"{host.name} ({exc.get_error_message()})"
    return host.name if verdict == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE else ""


@check("cpu-model", "resources")
def cpu_model(ctx: PreflightContext) -> CheckResult:
    """The guest CPU must be usable on the destination, and back on the source for ping-pong."""
    if ctx.plan is not None:
        model, who = ctx.plan.cpu_model, f"planned CPU model {ctx.plan.cpu_model} ({ctx.plan.domain_type})"
        refused = [why for host in (ctx.dst, ctx.src) if (why := _planned_cpu_refusal(ctx, host))]
    else:
        root = ctx.domain_xml()
        model = root.findtext("cpu/model") or root.find("cpu").get("mode") if root.find("cpu") is not None else "default"
        who = f"CPU model {model}"
        refused = [host.name for host in (ctx.dst, ctx.src)
                   if _cpu_verdict(ctx.conn(host), root) == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE]
    if refused:
        return result("cpu-model", FAIL, f"{who} is refused by {', '.join(refused)} "
                      f"(libvirt hypervisor CPU comparison)", "use a CPU model both hosts can run (e.g. a baseline; "
                      "`virsh hypervisor-cpu-baseline`)")
    return result("cpu-model", PASS, f"{who} accepted by {ctx.dst.name} and back by {ctx.src.name}")


def _machines(conn, arch: str) -> set[str]:
    """The machine types the host's QEMU runs for `arch`: aliases (pc) and the versioned types they stand for."""
    caps = ET.fromstring(conn.getCapabilities())
    found: set[str] = set()
    for guest in caps.findall("guest"):
        arch_el = guest.find("arch")
        if arch_el is None or arch_el.get("name") != arch:
            continue
        for m in arch_el.iter("machine"):
            found |= {m.text, m.get("canonical")} - {None}
    return found


@check("machine-type", "resources")
def machine_type(ctx: PreflightContext) -> CheckResult:
    if ctx.plan is not None:  # a planned guest starts on the source and lands on the destination: both must run it
        machine, arch, hosts, who = ctx.plan.machine, "x86_64", (ctx.src, ctx.dst), "planned machine type"
    else:
        os_type = ctx.domain_xml().find("os/type")
        machine, arch, hosts, who = os_type.get("machine"), os_type.get("arch") or "x86_64", (ctx.dst,), "machine type"
    lacking = [h.name for h in hosts if machine not in _machines(ctx.conn(h), arch)]
    if lacking:
        qemus = "QEMUs" if len(lacking) > 1 else "QEMU"
        return result("machine-type", FAIL, f"{who} {machine} is not supported by {' and '.join(lacking)}'s {qemus}",
                      "upgrade the destination's QEMU or use an older machine type "
                      "(`virsh capabilities` lists the types)")
    return result("machine-type", PASS, f"{who} {machine} supported on {' and '.join(h.name for h in hosts)}")


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

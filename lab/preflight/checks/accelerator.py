"""Accelerator checks: KVM as the lab probed it, and nested virtualization where the hosts are VMs.

What a host is (bare metal or a VM, its CPU flag, /dev/kvm) is asked of the
host itself; whether the lab needs KVM inside it comes from the context.
"""
from __future__ import annotations

from lab.preflight.checks.probes import key_values, sh
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, WARN, CheckResult, check, result
from lab.runtime.hosts import Host


@check("accelerator", "accelerator")
def accelerator(ctx: PreflightContext) -> CheckResult:
    """KVM as probed by the lab (booting a guest, not trusting /dev/kvm), and what the guest asks for."""
    accel = {h.name: ctx.accelerators.get(h.name, "unknown") for h in (ctx.src, ctx.dst)}
    wants = ctx.domain_xml().get("type") if ctx.guest else ctx.plan.domain_type if ctx.plan else None
    if wants == "kvm" and any(a != "kvm" for a in accel.values()):
        who = ctx.guest or "the planned guest"
        return result("accelerator", FAIL, f"{who} needs KVM, but the probe found {accel}",
                      "fix KVM on the hosts (module, nested virtualization) or run the guest under TCG")
    if any(a == "tcg" for a in accel.values()):
        return result("accelerator", WARN, f"hosts run guests under TCG ({accel}): KVM did not boot a guest",
                      "timings are TCG's, not KVM's; use a host with working KVM for KVM figures")
    return result("accelerator", PASS, f"KVM usable on both ({accel})")


_NESTED_PROBE = ("v=$(systemd-detect-virt --vm 2>/dev/null); [ -n \"$v\" ] || "
                 "v=$(grep -qw hypervisor /proc/cpuinfo && echo unknown || echo none); echo virt=$v; "
                 "echo flag=$(grep -m1 -owE 'vmx|svm' /proc/cpuinfo); "
                 "echo kvm=$(test -c /dev/kvm && echo yes || echo no)")


def _virtualization_of(host: Host) -> dict:
    """What a host is (bare metal or which VM), the hardware virtualization flag its CPU shows, /dev/kvm."""
    seen = key_values(sh(host, _NESTED_PROBE).stdout)
    return {"virt": seen.get("virt") or "none", "flag": seen.get("flag", ""), "kvm": seen.get("kvm") == "yes"}


@check("nested", "accelerator")
def nested(ctx: PreflightContext) -> CheckResult:
    """Hosts that are VMs run KVM guests only with nested virtualization: their CPU must show vmx/svm."""
    facts = {h.name: _virtualization_of(h) for h in (ctx.src, ctx.dst)}
    vms = {name: f for name, f in facts.items() if f["virt"] != "none"}
    if not vms:
        return result("nested", PASS, f"{ctx.src.name} and {ctx.dst.name} are bare metal: no nesting involved")
    probed_kvm = all(ctx.accelerators.get(name) == "kvm" for name in facts)
    # KVM that works without vmx/svm in a VM is para-virtualized nesting (PVM); the lab's probe vouches for it.
    off = {name: f for name, f in vms.items() if not (f["kvm"] and (f["flag"] or probed_kvm))}
    seen = "; ".join(f"{name}: {f['virt']} VM, CPU flag {f['flag'] or 'none'}, /dev/kvm {'yes' if f['kvm'] else 'no'}"
                     for name, f in facts.items())
    if off and ctx.nested_required:
        no_flag = [name for name, f in off.items() if not f["flag"]]
        remedy = ("on the machine running the host VMs: load kvm_intel/kvm_amd with nested=1 and give the VMs a "
                  "host-passthrough CPU" if no_flag else
                  f"load kvm_intel or kvm_amd on {', '.join(off)} (the CPU flag is there, /dev/kvm is not)")
        return result("nested", FAIL, f"nested virtualization is off but needed ({ctx.nested_required}): {seen}",
                      remedy + "; or set accelerator: auto to run guests under TCG")
    if off:
        return result("nested", PASS, f"not needed (guests run under TCG here): {seen}")
    return result("nested", PASS, f"nested virtualization on: {seen}")

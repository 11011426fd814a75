"""Guest state checks: the guest runs, is persistent, has no device that blocks migration, and uses a
disk cache mode that is safe on shared storage."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from lab.preflight.checks.probes import disks
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result

_STATE_NAMES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed"}


@check("vm-running", "vm", needs_guest=True)
def vm_running(ctx: PreflightContext) -> CheckResult:
    state = ctx.domain().state()[0]
    if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
        return result("vm-running", FAIL, f"{ctx.guest} is {_STATE_NAMES.get(state, state)} on {ctx.src.name}",
                      "start it, or use cold (offline) migration")
    return result("vm-running", PASS, f"{ctx.guest} is {_STATE_NAMES[state]} on {ctx.src.name}")


@check("vm-persistent", "vm", needs_guest=True)
def vm_persistent(ctx: PreflightContext) -> CheckResult:
    if not ctx.domain().isPersistent():
        # The harness migrates with --persistent --undefinesource: a transient guest would not
        # survive its next stop on the destination, so this is a fail, not a warning.
        return result("vm-persistent", FAIL, f"{ctx.guest} is transient: it exists nowhere once it stops",
                      "define it (virsh define) before migrating")
    return result("vm-persistent", PASS, f"{ctx.guest} has a persistent definition")


def _migration_blockers(root: ET.Element) -> list[str]:
    """The devices and CPU features QEMU refuses to migrate (USB host devices it can re-attach)."""
    blockers = []
    for dev in root.findall("./devices/hostdev"):
        if dev.get("type") != "usb":
            blockers.append(f"host device ({dev.get('type')}) passthrough")
    for shmem in root.findall("./devices/shmem"):
        model = shmem.find("model").get("type") if shmem.find("model") is not None else "ivshmem"
        if model == "ivshmem" or shmem.get("role") != "master":
            blockers.append(f"shmem {shmem.get('name')!r} ({model}, role {shmem.get('role') or 'default'})")
    for fs in root.findall("./devices/filesystem"):
        if (fs.find("driver") is not None and fs.find("driver").get("type") == "virtiofs"):
            blockers.append("virtiofs filesystem")
    for feature in root.findall("./cpu/feature"):
        if feature.get("name") == "invtsc" and feature.get("policy") in ("require", "force"):
            blockers.append("invtsc CPU feature")
    return blockers


@check("vm-devices", "vm", needs_guest=True)
def vm_devices(ctx: PreflightContext) -> CheckResult:
    blockers = _migration_blockers(ctx.domain_xml())
    if blockers:
        return result("vm-devices", FAIL, f"{ctx.guest} has devices that block migration: {'; '.join(blockers)}",
                      "detach them before migrating")
    return result("vm-devices", PASS, "no device that blocks migration")


@check("disk-cache", "vm", needs_guest=True)
def disk_cache(ctx: PreflightContext) -> CheckResult:
    """On shared storage only cache=none/directsync is safe: the destination must not read stale host cache."""
    if ctx.storage_mode == "local":
        return result("disk-cache", PASS, "non-shared: disks are copied, any cache mode is fine")
    bad = [f"{d.target} cache={d.cache or 'default'}" for d in disks(ctx)
           if not d.readonly and d.type == "file" and d.cache not in ("none", "directsync")]
    if bad:
        return result("disk-cache", FAIL, f"unsafe cache mode on shared storage: {', '.join(bad)}",
                      "set <driver cache='none'/> on shared disks")
    return result("disk-cache", PASS, "writable shared disks use cache=none/directsync")

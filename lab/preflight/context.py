"""What preflight checks look at: a host pair, a guest or a planned one, and what the caller expects.

`context_for` builds one from a Lab. Without a guest it plans one: the lab's
guest (lab.yaml `guest:`: memory, vCPUs, disk, CPU model, machine type) with
the caller's overrides, on the lab's storage, under the lab's accelerator.
Everything that differs between labs (storage mode and path, probed
accelerator, why nested KVM is needed) is read from the Lab as data; nothing
here asks which backend made it.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from lab.errors import LabError
from lab.runtime.hosts import Host
from lab.runtime.lab import Lab


@dataclass(frozen=True)
class PlannedGuest:
    """A guest that does not exist yet: what the destination must be able to take."""

    memory_mib: int
    vcpus: int
    disk_mib: int
    cpu_model: str
    machine: str
    domain_type: str  # kvm | qemu: what it would run under
    storage_path: str  # the directory its disk would live in, the same path on every host
    nfs_server: str | None = None  # with storage: nfs, QEMU reaches the disk on this server

    def describe(self) -> str:
        return (f"{self.memory_mib} MiB, {self.vcpus} vCPU{'s' if self.vcpus != 1 else ''}, {self.disk_mib} MiB disk, "
                f"CPU {self.cpu_model}, machine {self.machine}, {self.domain_type}")


# What the caller may change of the planned guest (the doctor's --memory, --vcpus, --disk, --cpu-model, --machine).
PLAN_KEYS = ("memory_mib", "vcpus", "disk_mib", "cpu_model", "machine")


@dataclass
class PreflightContext:
    src: Host
    dst: Host
    guest: str | None = None
    storage_mode: str = "shared"  # shared | nfs | local: how the guest's disks reach the destination
    max_downtime_ms: int | None = None  # expected, when the caller configured one
    bandwidth_mibs: int | None = None
    accelerators: dict[str, str] = field(default_factory=dict)  # host name -> kvm | tcg (as the lab probed)
    nested_required: str = ""  # why the lab needs KVM inside hosts that are VMs ("" = it does not)
    src_conn: object = None  # optional: the libvirt connections to use (default: host.connect())
    dst_conn: object = None
    plan: PlannedGuest | None = None  # without a guest: the guest the pair is checked for

    def conn(self, host: Host):
        given = self.src_conn if host is self.src else self.dst_conn
        return given if given is not None else host.connect()

    def domain(self) -> libvirt.virDomain:
        return self.conn(self.src).lookupByName(self.guest)

    def domain_xml(self) -> ET.Element:
        return ET.fromstring(self.domain().XMLDesc(0))


def _pick(lab: Lab, name: str, flag: str) -> Host:
    known = [h.name for h in lab.hosts]
    if name not in known:
        raise LabError(f"unknown host {name!r} for {flag}: this lab has {', '.join(known)}")
    return lab.host(name)


def plan_for(lab: Lab, **overrides) -> PlannedGuest:
    """The lab's guest as lab.yaml sizes it, with `overrides` (PLAN_KEYS) applied, on the lab's storage."""
    unknown = set(overrides) - set(PLAN_KEYS)
    if unknown:
        raise LabError(f"not a planned-guest setting: {', '.join(sorted(unknown))} (known: {', '.join(PLAN_KEYS)})")
    spec = lab.config.guest
    values = {key: getattr(spec, key) for key in PLAN_KEYS} | {k: v for k, v in overrides.items() if v is not None}
    # A lab that demands KVM plans KVM guests; otherwise guests run under what the lab's probe chose.
    domain_type = "kvm" if lab.config.accelerator == "kvm" else lab.domain_type
    return PlannedGuest(**values, domain_type=domain_type, storage_path=str(lab.storage_path(lab.storage.mode)),
                        nfs_server=lab.nfs_address if lab.resolve_storage(None) == "nfs" else None)


def context_for(lab: Lab, src: str | None = None, dst: str | None = None, guest: str | None = None,
                plan: dict | None = None, **expected) -> PreflightContext:
    """A context for a lab's host pair: for `guest` (the storage mode follows where its disk lives), or
    without one for a planned guest (the lab's, changed by `plan`, a dict of PLAN_KEYS)."""
    source = _pick(lab, src, "--src") if src else lab.hosts[0]
    partner = next((b for a, b in lab.pairs if a.name == source.name), None)
    destination = _pick(lab, dst, "--dst") if dst else partner or lab.other(source)
    if destination.name == source.name:
        raise LabError(f"source and destination are both {source.name}: name two different hosts (--src, --dst)")
    mode = lab.storage.mode
    planned = None
    if guest:
        if plan and any(v is not None for v in plan.values()):
            given = ", ".join("--" + k.replace("_mib", "").replace("_", "-") for k, v in plan.items() if v is not None)
            raise LabError(f"{given} describe a planned guest; with --guest {guest} the guest's own settings are "
                           "checked: drop one or the other")
        try:
            xml = source.connect().lookupByName(guest).XMLDesc(0)
        except libvirt.libvirtError as exc:
            raise LabError(f"guest {guest!r} not found on {source.name}: {exc.get_error_message()} "
                           "(`python -m lab guest list` shows where guests are)") from None
        # A guest made with storage: local keeps its disk in the per-host directory whatever the lab's default.
        mode = "local" if str(lab.storage_path("local")) + "/" in xml else "shared" if mode == "local" else mode
    else:
        planned = plan_for(lab, **(plan or {}))
    accel = {h.name: lab.accelerator for h in lab.hosts}
    expected.setdefault("nested_required", nested_need(lab))
    return PreflightContext(source, destination, guest, mode, accelerators=accel, plan=planned, **expected)


def nested_need(lab: Lab) -> str:
    """Why this lab needs KVM inside its hosts, or "" (then hosts without it run guests under TCG)."""
    if lab.config.accelerator == "kvm":
        return "lab.yaml accelerator: kvm"
    if lab.nested_kvm_reason:
        return lab.nested_kvm_reason
    if lab.accelerator == "kvm":
        return "the lab's probe chose KVM for its guests"
    return ""

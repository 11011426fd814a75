"""What preflight checks look at: a host pair, optionally a guest, and what the caller expects.

`context_for` builds one from a Lab. Everything that differs between labs
(storage mode and path, probed accelerator, why nested KVM is needed) is read
from the Lab as data; nothing here asks which backend made it.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from lab.errors import LabError
from lab.runtime.hosts import Host
from lab.runtime.lab import Lab


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

    def conn(self, host: Host):
        given = self.src_conn if host is self.src else self.dst_conn
        return given if given is not None else host.connect()

    def domain(self) -> libvirt.virDomain:
        return self.conn(self.src).lookupByName(self.guest)

    def domain_xml(self) -> ET.Element:
        return ET.fromstring(self.domain().XMLDesc(0))


def context_for(lab: Lab, src: str | None = None, dst: str | None = None, guest: str | None = None,
                **expected) -> PreflightContext:
    """A context for a lab's host pair; the storage mode follows where the guest's disk lives."""
    source = lab.host(src) if src else lab.hosts[0]
    partner = next((b for a, b in lab.pairs if a.name == source.name), None)
    destination = lab.host(dst) if dst else partner or lab.other(source)
    mode = lab.storage.mode
    if guest:
        try:
            xml = source.connect().lookupByName(guest).XMLDesc(0)
        except libvirt.libvirtError as exc:
            raise LabError(f"guest {guest!r} not found on {source.name}: {exc.get_error_message()}") from None
        # A guest made with storage: local keeps its disk in the per-host directory whatever the lab's default.
        mode = "local" if str(lab.storage_path("local")) + "/" in xml else "shared" if mode == "local" else mode
    accel = {h.name: lab.accelerator for h in lab.hosts}
    expected.setdefault("nested_required", nested_need(lab))
    return PreflightContext(source, destination, guest, mode, accelerators=accel, **expected)


def nested_need(lab: Lab) -> str:
    """Why this lab needs KVM inside its hosts, or "" (then hosts without it run guests under TCG)."""
    if lab.config.accelerator == "kvm":
        return "lab.yaml accelerator: kvm"
    if lab.nested_kvm_reason:
        return lab.nested_kvm_reason
    if lab.accelerator == "kvm":
        return "the lab's probe chose KVM for its guests"
    return ""

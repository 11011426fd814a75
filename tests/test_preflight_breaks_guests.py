"""Preflight checks of the guest, its CPU and machine type, the two hosts' builds and the migration
parameters, proven: break the precondition for real (on kvmpf, or on kvmpfs whose hosts run two real
stacks), see the check fail, restore, see it pass (tests/preflight_tools.py says which labs).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import libvirt
import pytest

from lab.guest.domain import create_guest, remove_guest
from lab.preflight import FAIL
from tests.preflight_tools import (GUEST_CHECKS, MARKS, NEWER_MACHINE, UNBREAKABLE_HERE, assert_all_proven, broken,
                                   check_one, passes, planned, proves)

pytestmark = MARKS


def test_cpu_model_fails_for_a_model_the_destination_refuses(pf, make_guest):
    lab, _ = pf
    dst = lab.hosts[1].connect()
    candidates = ("Icelake-Server", "Cascadelake-Server", "EPYC-Milan", "Skylake-Server")
    refused = [m for m in candidates if dst.compareHypervisorCPU(
        None, "x86_64", None, lab.domain_type,
        f"<cpu mode='custom' match='exact'><model fallback='forbid'>{m}</model></cpu>", 0)
        == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE]
    if not refused:
        pytest.skip(f"this host runs every one of {candidates}: no model to make the destination refuse")
    guest = make_guest(cpu_model=refused[0], start=False, wait=False)
    proves("cpu-model", lab, f"CPU model {refused[0]} is refused by hv2, hv1", guest)
    passes("cpu-model", lab, make_guest(start=False, wait=False))
    # No guest: the same model planned, and a model no libvirt knows.
    proves("cpu-model", lab, f"planned CPU model {refused[0]} ({lab.domain_type}) is refused by hv2, hv1",
           plan=planned(lab, cpu_model=refused[0]))
    unknown = check_one(lab, "cpu-model", plan=planned(lab, cpu_model="NoSuchCPU-v9"))
    assert unknown.status == FAIL and "is refused by hv2 (" in unknown.seen, unknown.line()
    passes("cpu-model", lab)


def test_machine_type_fails_when_the_destination_lacks_it(two_stacks, pf):
    lab = two_stacks
    guest = create_guest(lab, lab.hosts[1], machine=NEWER_MACHINE, start=False, wait=False)
    pinned = create_guest(lab, lab.hosts[1], machine="pc-i440fx-7.2", start=False, wait=False)
    try:
        proves("machine-type", lab, f"machine type {NEWER_MACHINE} is not supported by hv1", guest,
               src="hv2", dst="hv1")
        passes("machine-type", lab, pinned, src="hv2", dst="hv1")  # the older QEMU's own type rolls back
    finally:
        remove_guest(lab, guest)
        remove_guest(lab, pinned)
    # No guest: the planned type, one way and the other; and, on kvmpf, a type neither QEMU has.
    proves("machine-type", lab, f"planned machine type {NEWER_MACHINE} is not supported by hv1's QEMU",
           plan=planned(lab, machine=NEWER_MACHINE), src="hv2", dst="hv1")
    passes("machine-type", lab, plan=planned(lab, machine="pc-i440fx-7.2"), src="hv2", dst="hv1")
    pf_lab, _ = pf
    proves("machine-type", pf_lab, "planned machine type pc-i440fx-0.1 is not supported by hv1 and hv2's QEMUs",
           plan=planned(pf_lab, machine="pc-i440fx-0.1"))
    passes("machine-type", pf_lab)


def test_versions_fail_when_the_destination_is_older(two_stacks):
    lab = two_stacks
    proves("versions", lab, "on hv1 is older than", src="hv2", dst="hv1")
    passes("versions", lab, src="hv1", dst="hv2")


def test_vm_running_fails_for_a_shut_off_guest(pf, make_guest):
    lab, _ = pf
    guest = make_guest(start=False, wait=False)
    proves("vm-running", lab, "is shut off on hv1", guest)
    guest.domain().create()
    passes("vm-running", lab, guest)


def test_vm_persistent_fails_for_a_transient_guest(pf, make_guest):
    lab, _ = pf
    guest = make_guest(transient=True, wait=False)
    proves("vm-persistent", lab, "is transient", guest)
    passes("vm-persistent", lab, make_guest(start=False, wait=False))


def test_vm_devices_fails_for_a_guest_with_a_peer_shmem_device_and_libvirt_agrees(pf, make_guest):
    lab, _ = pf
    shmem = "<shmem name='preflight-peer'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>"
    guest = make_guest(extra_devices=shmem, wait=False)
    proves("vm-devices", lab, "shmem 'preflight-peer'", guest)
    with pytest.raises(libvirt.libvirtError, match="shmem"):  # the real migration is refused too
        guest.domain().migrateToURI3(lab.hosts[1].libvirt_uri, {}, libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                                     | libvirt.VIR_MIGRATE_UNSAFE)
    passes("vm-devices", lab, make_guest(start=False, wait=False))


def test_disk_cache_fails_for_writeback_on_shared_storage(pf, make_guest):
    lab, _ = pf
    guest = make_guest(disk_cache="writeback", start=False, wait=False)
    proves("disk-cache", lab, "vda cache=writeback", guest)
    passes("disk-cache", lab, make_guest(start=False, wait=False))


def test_max_downtime_fails_when_it_reads_back_other_than_configured(pf, make_guest):
    lab, _ = pf
    guest = make_guest(wait=False)
    guest.domain().migrateSetMaxDowntime(5000, 0)
    proves("max-downtime", lab, "reads back 5000 ms, configured 300 ms", guest, max_downtime_ms=300)
    guest.domain().migrateSetMaxDowntime(300, 0)
    passes("max-downtime", lab, guest, max_downtime_ms=300)


def test_max_downtime_fails_without_a_guest_for_a_value_the_hosts_qemu_refuses(pf):
    """No guest: each host's QEMU (no machine) is given the configured value over QMP and reads it back."""
    lab, _ = pf
    proves("max-downtime", lab, "max downtime 2000001 ms is refused by hv1's QEMU: Parameter 'downtime_limit'",
           max_downtime_ms=2000001)
    result = passes("max-downtime", lab, max_downtime_ms=450)
    assert "max downtime 450 ms taken and read back by each host's QEMU (hv1 450 ms, hv2 450 ms)" in result.seen
    assert "QEMU's default applies (hv1 300 ms, hv2 300 ms" in passes("max-downtime", lab).seen


def test_bandwidth_fails_when_it_reads_back_other_than_configured(pf, make_guest):
    lab, _ = pf
    guest = make_guest(wait=False)
    guest.domain().migrateSetMaxSpeed(5, 0)
    proves("bandwidth", lab, "reads back 5 MiB/s, configured 32 MiB/s", guest, bandwidth_mibs=32)
    guest.domain().migrateSetMaxSpeed(32, 0)
    passes("bandwidth", lab, guest, bandwidth_mibs=32)


def test_bandwidth_fails_without_a_guest_when_the_link_is_slower_than_configured(pf):
    """No guest: the migration link hv1 -> hv2 is measured. A token bucket on hv1's lab interface holds it
    to 8 Mbit/s, under the configured 32 MiB/s; QEMU's own refusal is shown by a value beyond its range."""
    lab, backend = pf
    with broken(lambda: backend.host_exec("hv1", "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                                          "rate", "8mbit", "burst", "32kb", "latency", "400ms"),
                lambda: backend.host_exec("hv1", "tc", "qdisc", "del", "dev", "eth0", "root")):
        result = proves("bandwidth", lab, "configured bandwidth 32 MiB/s, but the link hv1 -> hv2 carried",
                        bandwidth_mibs=32)
    assert float(re.search(r"carried (\d+) MiB/s", result.seen).group(1)) < 4, result.line()
    proves("bandwidth", lab, "hv1's QEMU refuses it", bandwidth_mibs=1 << 44)
    assert "bandwidth 32 MiB/s taken by each host's QEMU" in passes("bandwidth", lab, bandwidth_mibs=32).seen
    assert "unlimited (nothing configured)" in passes("bandwidth", lab).seen


def test_accelerator_fails_for_a_kvm_guest_where_the_probe_found_no_working_kvm(pf, make_guest):
    lab, _ = pf
    if lab.accelerator == "kvm":
        pytest.skip("KVM works on this machine: a KVM guest is ready here, nothing to break")
    guest = make_guest(domain_type="kvm", start=False, wait=False)
    proves("accelerator", lab, "needs KVM, but the probe found", guest)
    # No guest: a planned KVM guest (what a lab with accelerator: kvm plans).
    proves("accelerator", lab, "the planned guest needs KVM, but the probe found", plan=planned(lab, domain_type="kvm"))


def test_nested_fails_when_the_lab_needs_kvm_inside_hosts_without_vmx(pf):
    """The embedded hosts share this machine's CPU: where it is a VM without vmx/svm, a lab that needs
    KVM inside its hosts (lab.yaml accelerator: kvm, or a Vagrant lab with driver kvm) must be refused.
    The demand is what this test changes; the missing CPU flag is this machine's own (the Vagrant TCG lab
    shows the same fail on its hypervisor VMs, `make vagrant-test`)."""
    lab, _ = pf
    virt = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True).stdout.strip() or "none"
    flags = Path("/proc/cpuinfo").read_text().split()
    if virt == "none" or "vmx" in flags or "svm" in flags:
        UNBREAKABLE_HERE.add("nested")
        pytest.skip(f"this machine ({virt}) shows vmx/svm or is bare metal: nested virtualization cannot be "
                    "taken away from the embedded hosts; `make vagrant-test` shows the fail on TCG host VMs")
    passes("nested", lab)  # as the lab is (accelerator auto): guests run under TCG, nesting not needed
    result = proves("nested", lab, "nested virtualization is off but needed", nested_required="lab.yaml accelerator: kvm")
    assert "CPU flag none" in result.seen and "nested=1" in result.remedy, result.line()


def test_every_guest_check_was_proven_by_a_break():
    assert_all_proven(GUEST_CHECKS)

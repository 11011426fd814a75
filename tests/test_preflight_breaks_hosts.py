"""Preflight checks of access, network, storage and destination resources, proven: break the precondition
for real on kvmpf, see the check fail, restore, see it pass (tests/preflight_tools.py says which labs).

Each check the hosts can answer is broken twice: for an existing guest, and for a planned one (no guest
at all, as `python -m lab doctor` runs without --guest).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import libvirt

from lab.preflight import PASS
from tests.preflight_tools import (HOST_CHECKS, MARKS, UNBREAKABLE_HERE, assert_all_proven, broken, check_one, passes,
                                   planned, proves)

pytestmark = MARKS


def test_ssh_access_fails_when_the_key_is_not_authorized(pf):
    lab, _ = pf
    keys = lab.dir / "authorized_keys"
    good = keys.read_text()
    with broken(lambda: keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBadKeyBadKeyBadKeyBadKeyBadKeyBadKeyBadKey x\n"),
                lambda: keys.write_text(good)):
        proves("ssh-access", lab, "Permission denied")
    passes("ssh-access", lab)


def test_libvirt_read_write_fails_on_a_read_only_connection(pf):
    lab, _ = pf
    readonly = libvirt.openReadOnly(lab.hosts[1].libvirt_uri)
    try:
        proves("libvirt-read-write", lab, "read only access prevents", dst_conn=readonly)
    finally:
        readonly.close()
    passes("libvirt-read-write", lab)


def test_p2p_reach_fails_when_the_destination_daemon_is_stopped(pf):
    lab, backend = pf
    with broken(lambda: backend.stop_daemon("hv2", "libvirtd"), lambda: backend.start_daemon("hv2", "libvirtd")):
        proves("p2p-reach", lab, "hv1 cannot open")
    passes("p2p-reach", lab)


def test_reachable_fails_when_the_destination_link_is_down(pf):
    lab, backend = pf
    with broken(lambda: backend.host_exec("hv2", "ip", "link", "set", "eth0", "down"),
                lambda: backend.host_exec("hv2", "ip", "link", "set", "eth0", "up")):
        proves("reachable", lab, "hv1 -> hv2 (198.19.20.12:22) blocked")
    passes("reachable", lab)


def test_same_segment_fails_when_the_destination_is_on_another_subnet(pf):
    lab, backend = pf
    with broken(lambda: (backend.host_exec("hv2", "ip", "addr", "del", "198.19.20.12/24", "dev", "br0"),
                         backend.host_exec("hv2", "ip", "addr", "add", "198.19.20.12/25", "dev", "br0")),
                lambda: (backend.host_exec("hv2", "ip", "addr", "del", "198.19.20.12/25", "dev", "br0"),
                         backend.host_exec("hv2", "ip", "addr", "add", "198.19.20.12/24", "dev", "br0"))):
        proves("same-segment", lab, "hv2 on 198.19.20.0/25")
    passes("same-segment", lab)


def test_mtu_fails_when_the_destination_mtu_differs(pf):
    lab, backend = pf
    with broken(lambda: backend.host_exec("hv2", "ip", "link", "set", "br0", "mtu", "1400"),
                lambda: backend.host_exec("hv2", "ip", "link", "set", "br0", "mtu", "1500")):
        proves("mtu", lab, "mtu 1400")
    passes("mtu", lab)


def _nft_drop(backend, ports: str):
    """nftables inside the destination's namespace, dropping TCP to `ports`."""
    def apply():
        backend.host_exec("hv2", "nft", "add", "table", "inet", "preflight_break")
        backend.host_exec("hv2", "nft", "add", "chain", "inet", "preflight_break", "input",
                          "{ type filter hook input priority 0; }")
        backend.host_exec("hv2", "nft", "add", "rule", "inet", "preflight_break", "input", "tcp", "dport", ports, "drop")
    return apply, lambda: backend.host_exec("hv2", "nft", "delete", "table", "inet", "preflight_break")


def test_migration_ports_fail_when_nftables_drops_them_on_the_destination(pf):
    lab, backend = pf
    with broken(*_nft_drop(backend, "49152-49215")):
        proves("migration-ports", lab, "are filtered")
    passes("migration-ports", lab)


def test_daemon_port_fails_when_nftables_drops_ssh_on_the_destination(pf):
    lab, backend = pf
    with broken(*_nft_drop(backend, "22")):
        proves("daemon-port", lab, "hv2:22 (ssh, the qemu+ssh transport) is blocked")
    passes("daemon-port", lab)


def test_names_fail_when_the_source_resolves_the_destination_wrongly(pf):
    lab, _ = pf
    hosts = lab.dir / "hosts" / "hv1" / "hosts"
    good = hosts.read_text()
    with broken(lambda: hosts.write_text(good.replace("198.19.20.12 hv2", "198.19.20.99 hv2")),
                lambda: hosts.write_text(good)):
        proves("names", lab, "'hv2' resolves on hv1 to 198.19.20.99")
    passes("names", lab)


def test_clock_sync_cannot_be_broken_between_hosts_on_one_kernel(pf):
    """The embedded hosts are namespaces of one kernel: one clock, nothing to set apart here.
    `make vagrant-test` breaks it for real (chrony stopped on hv2 and its clock stepped 5 s)."""
    lab, _ = pf
    result = check_one(lab, "clock-sync")
    assert result.status == PASS and "run on one kernel" in result.seen, result.line()
    UNBREAKABLE_HERE.add("clock-sync")


def test_storage_mode_fails_when_the_disk_is_not_on_shared_storage(pf, make_guest):
    lab, _ = pf
    guest = make_guest(storage="local", wait=False)
    proves("storage-mode", lab, "g-", guest, storage_mode="shared")
    assert "does not exist on hv2" in check_one(lab, "storage-mode", guest, storage_mode="shared").seen
    shared = make_guest(storage="shared", wait=False)
    passes("storage-mode", lab, shared)


def test_storage_mode_fails_without_a_guest_when_the_destination_sees_other_storage(pf):
    """No guest: a marker in the lab's shared directory, written on hv1, must be read on hv2. An empty
    tmpfs mounted over that directory inside hv2's mount namespace hides the shared storage from hv2."""
    lab, backend = pf
    shared = str(lab.storage_path("shared"))
    with broken(lambda: backend.host_exec("hv2", "mount", "-t", "tmpfs", "-o", "size=1m", "pf-break", shared),
                lambda: backend.host_exec("hv2", "umount", shared)):
        proves("storage-mode", lab, f"{shared}: a marker written on hv1 is not seen on hv2")
    result = passes("storage-mode", lab)
    assert "a marker written on the source is read on the destination" in result.seen, result.line()


def test_storage_mode_fails_without_a_guest_when_local_storage_is_one_storage(pf):
    """storage: local copies the disk: a per-host path that is in truth one storage would take the copy
    onto its own source. Both hosts get the shared directory bind-mounted over their local one."""
    lab, backend = pf
    local, shared = str(lab.storage_path("local")), str(lab.storage_path("shared"))
    plan = planned(lab, storage_path=local)
    with broken(lambda: [backend.host_exec(h, "mount", "--bind", shared, local) for h in ("hv1", "hv2")],
                lambda: [backend.host_exec(h, "umount", local) for h in ("hv1", "hv2")]):
        proves("storage-mode", lab, "a copied disk would overwrite its source", storage_mode="local", plan=plan)
    result = passes("storage-mode", lab, storage_mode="local", plan=plan)
    assert f"non-shared: {local} is each host's own" in result.seen, result.line()


def test_storage_filesystem_fails_when_the_disk_directory_is_missing_on_the_destination(pf, make_guest):
    lab, backend = pf
    only_on_src = f"{lab.storage_path('local')}/only-hv1"
    backend.host_exec("hv1", "mkdir", "-p", only_on_src)
    guest = make_guest(storage="local", disk_dir=only_on_src, wait=False)
    proves("storage-filesystem", lab, f"hv2 {only_on_src}: missing", guest)
    passes("storage-filesystem", lab, make_guest(storage="local", wait=False))
    # No guest: the planned disk's directory exists on hv1 only.
    proves("storage-filesystem", lab, f"hv2 {only_on_src}: missing", plan=planned(lab, storage_path=only_on_src))
    passes("storage-filesystem", lab)


def test_storage_writable_fails_on_a_read_only_destination_directory(pf, make_guest):
    lab, backend = pf
    guest = make_guest(storage="local", wait=False)
    local = str(lab.storage_path("local"))
    plan = planned(lab, storage_path=local)
    with broken(lambda: backend.host_exec("hv2", "mount", "-o", "remount,bind,ro", local),
                lambda: backend.host_exec("hv2", "mount", "-o", "remount,bind,rw", local)):
        proves("storage-writable", lab, "is not writable by QEMU's user root", guest)
        proves("storage-writable", lab, f"{local} on hv2 is not writable by QEMU's user root",
               storage_mode="local", plan=plan)
    passes("storage-writable", lab, guest)
    passes("storage-writable", lab, storage_mode="local", plan=plan)


def test_destination_room_fails_when_the_disks_do_not_fit(pf, make_guest):
    lab, _ = pf
    huge = make_guest(storage="local", disk_mib=64 << 20, wait=False)  # 64 TiB virtual, sparse on the source
    proves("destination-room", lab, "disks need 67108864 MiB", huge)
    passes("destination-room", lab, make_guest(storage="local", wait=False))
    # No guest: a planned 64 TiB disk, on the shared storage and as a copy on hv2's own.
    proves("destination-room", lab, "the planned disk needs 67108864 MiB (shared storage)",
           plan=planned(lab, disk_mib=64 << 20))
    local = planned(lab, disk_mib=64 << 20, storage_path=str(lab.storage_path("local")))
    proves("destination-room", lab, "the planned disk needs 67108864 MiB (its copy)", storage_mode="local", plan=local)
    passes("destination-room", lab)


def test_destination_memory_fails_for_a_guest_bigger_than_what_the_destination_has(pf, make_guest):
    lab, _ = pf
    big = make_guest(memory_mib=1 << 20, start=False, wait=False)  # 1 TiB: defined, never started
    proves("destination-memory", lab, "guest needs 1048576 MiB", big)
    passes("destination-memory", lab, make_guest(start=False, wait=False))


def test_destination_memory_fails_without_a_guest_for_a_planned_guest_bigger_than_free_memory(pf):
    """The figures are hv2's own: its MemAvailable, the planned size and the margin."""
    lab, backend = pf
    result = proves("destination-memory", lab, "planned guest needs 1048576 MiB + 128 MiB margin",
                    plan=planned(lab, memory_mib=1 << 20))
    seen_mib = int(re.search(r"hv2 has (\d+) MiB available", result.seen).group(1))
    meminfo = backend.host_exec("hv2", "cat", "/proc/meminfo").stdout
    now_mib = int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) // 1024
    assert abs(seen_mib - now_mib) < 1024, (seen_mib, now_mib)  # the destination's real figure, give or take churn
    passes("destination-memory", lab)


def test_destination_vcpus_fail_above_the_destination_limit(pf, make_guest):
    lab, _ = pf
    limit = lab.hosts[1].connect().getMaxVcpus(lab.domain_type)
    wide = make_guest(vcpus=limit + 1, start=False, wait=False)
    proves("destination-vcpus", lab, f"allows {limit}", wide)
    passes("destination-vcpus", lab, make_guest(start=False, wait=False))
    # No guest: the limit of the planned machine type, as hv2's domain capabilities state it.
    caps = lab.hosts[1].connect().getDomainCapabilities(None, "x86_64", "pc", lab.domain_type, 0)
    machine_limit = int(ET.fromstring(caps).find("vcpu").get("max"))
    proves("destination-vcpus", lab, f"planned guest has {machine_limit + 1} vCPUs, hv2 allows {machine_limit}",
           plan=planned(lab, vcpus=machine_limit + 1))
    passes("destination-vcpus", lab)


def test_every_host_check_was_proven_by_a_break():
    assert_all_proven(HOST_CHECKS)

"""The embedded lab is made of real parts: hosts over SSH and libvirt, a real guest, a real migration."""
import time
import uuid

import pytest

from lab.migration.live import MigrationParams, migrate

# One worker runs the module: its pinned lab is the module's (a second worker would make and take down the same one).
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("kvmemb")]
PINNED_LAB = ("kvmemb", 71)  # the migration runs on the stack the harness's tests pin (tests/labtools.py)


def test_every_host_answers_over_ssh_with_its_own_view(hosts):
    for host in hosts:
        out = host.run("hostname; cat /etc/hostname; ls /run/libvirt/libvirt-sock").stdout.split()
        assert out[:2] == [host.name, host.name]


def test_every_host_has_its_own_libvirtd_with_a_valid_distinct_uuid(hosts):
    uuids = set()
    for host in hosts:
        conn = host.connect()
        assert conn.getHostname() == host.name
        host_uuid = conn.getCapabilities().split("<uuid>")[1].split("</uuid>")[0]
        assert uuid.UUID(host_uuid).version == 4
        assert host_uuid == host.host_uuid
        uuids.add(host_uuid)
    assert len(uuids) == len(hosts)


def test_every_lab_host_resolves_every_other(hosts):
    for host in hosts:
        for other in hosts:
            assert host.run(f"getent hosts {other.name}").stdout.split()[0] == other.address


def test_hosts_reach_each_other_over_ssh_for_p2p(hosts):
    a, b = hosts[0], hosts[1]
    assert a.run(f"ssh {b.name} hostname").stdout.strip() == b.name


def test_a_host_bridge_keeps_its_mac_when_a_port_with_a_lower_one_joins(lab, hosts):
    """A guest's tap joining a host's bridge must not change the host's MAC: a bridge takes its lowest port's
    MAC unless given its own, and a destination tap with the same MAC as the source's then cut the hosts off
    from each other mid-migration. A port with the lowest MAC there is joins for real, then leaves."""
    if lab.state.backend != "embedded":
        pytest.skip(f"the host bridges are the embedded lab's; this lab is {lab.state.backend}")
    host = hosts[0]
    before = host.run("cat /sys/class/net/br0/address").stdout.strip()
    joined = host.run("ip link add lowport address 02:00:00:00:00:01 type veth peer name lowpeer && ip link set lowport master br0 && "
                      "cat /sys/class/net/br0/address; ip link del lowport")
    assert joined.stdout.strip() == before, f"br0 went from {before} to {joined.stdout.strip()} when a port joined"
    assert before.startswith("02:00:"), before


def test_testinfra_sees_each_host_like_a_real_one(hosts):
    for host in hosts:
        infra = host.testinfra()
        assert infra.check_output("hostname") == host.name
        assert infra.file("/etc/libvirt/libvirtd.conf").contains(host.host_uuid)
        assert infra.process.filter(comm="libvirtd")


def test_guest_boots_heartbeats_and_answers_echo(guest):
    assert guest.heartbeats.count() > 0
    before = guest.heartbeats.count()
    time.sleep(1.0)
    rate = guest.heartbeats.count() - before
    assert rate > 300, f"{rate} heartbeats in 1 s at a nominal 1000/s"
    prober = guest.echo_prober()
    time.sleep(0.5)
    assert prober.replies() > 100
    info = guest.info()
    assert uuid.UUID(info["boot_id"]) and int(info["uptime_ms"]) > 0


def test_guest_memory_pattern_and_disk_round_trip(guest):
    assert guest.agent("fill", 7, 16)["mib"] == "16"
    assert guest.agent("verify")["bad_words"] == "0"
    written = guest.agent("diskwrite", 3, 4)
    assert guest.agent("disksum", 4)["sum"] == written["sum"]


def test_live_p2p_migration_hv1_to_hv2_keeps_the_guest_answering(pinned_lab, pinned_guest):
    lab, guest = pinned_lab, pinned_guest
    src_host, dst_host = lab.hosts
    guest.agent("fill", 11, 32)
    boot_id = guest.boot_id
    prober = guest.echo_prober()
    result = migrate(guest.name, src_host, dst_host,
                     MigrationParams(unsafe=lab.needs_unsafe("shared"), migrate_uri=f"tcp://{dst_host.address}"))
    assert result.ok, result.error
    guest.host = dst_host
    assert guest.locate(lab.hosts) == [dst_host]
    assert result.stats["downtime"] > 0
    replies = prober.replies()
    time.sleep(0.5)
    assert prober.replies() > replies + 100, "no echo replies from the destination"
    assert guest.info()["boot_id"] == boot_id
    assert guest.agent("verify")["bad_words"] == "0"
    window = guest.heartbeats.window(result.started_ns, time.time_ns())
    assert window.lost == 0 and window.reordered == 0

"""Per-host configuration files of the embedded lab: libvirt, sshd, /etc/hosts."""
from __future__ import annotations

import shutil
from pathlib import Path

from lab.runtime.layout import MIGRATION_PORTS

# Bind-mounted over these paths inside each host, so each host has its own daemons' view.
PER_HOST_DIRS = {
    "etc-libvirt": "/etc/libvirt",
    "run-libvirt": "/run/libvirt",
    "var-lib-libvirt": "/var/lib/libvirt",
    "log-libvirt": "/var/log/libvirt",
    "cache-libvirt": "/var/cache/libvirt",
    "root-ssh": "/root/.ssh",
}
PER_HOST_FILES = {"hosts": "/etc/hosts", "hostname": "/etc/hostname"}


def copy_libvirt_config(dest: Path) -> None:
    """The distro's /etc/libvirt without its default NAT network (it would use 192.168.122.0/24)."""
    shutil.copytree("/etc/libvirt", dest, symlinks=True, dirs_exist_ok=True)
    networks = dest / "qemu" / "networks"
    if networks.exists():
        shutil.rmtree(networks)
    networks.mkdir(parents=True)
    for stale in (dest / "qemu").glob("*.xml"):
        stale.unlink()


def write_libvirtd_conf(etc: Path, host_uuid: str) -> None:
    (etc / "libvirtd.conf").write_text(
        f'host_uuid = "{host_uuid}"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        'unix_sock_group = "root"\n'
        'unix_sock_ro_perms = "0777"\n'
        'unix_sock_rw_perms = "0770"\n'
        'auth_unix_ro = "none"\n'
        'auth_unix_rw = "none"\n'
    )


def write_qemu_conf(etc: Path) -> None:
    # QEMU runs as root here: the lab's storage and kernel live in root-owned dirs.
    # No cgroups: `ip netns exec` remounts /sys, hiding /sys/fs/cgroup from libvirtd.
    (etc / "qemu.conf").write_text(
        'user = "root"\n'
        'group = "root"\n'
        'security_driver = "none"\n'
        'cgroup_controllers = [ ]\n'
        f"migration_port_min = {MIGRATION_PORTS[0]}\n"
        f"migration_port_max = {MIGRATION_PORTS[1]}\n"
        # The p2p connection between two lab hosts: libvirt's default (5 s x 5) dropped it mid-migration
        # ("connection closed due to keepalive timeout", then "client socket is closed") when the shared
        # two-core runner stalled a host's libvirtd for 30 s. Two minutes tolerates the lab, not a hang.
        "keepalive_interval = 10\n"
        "keepalive_count = 12\n"
    )


def write_hosts(path: Path, entries: list[tuple[str, str]]) -> None:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{address} {name}" for name, address in entries]
    path.write_text("\n".join(lines) + "\n")


def write_sshd_config(path: Path, address: str, host_key: Path, authorized: Path, pidfile: Path) -> None:
    path.write_text(
        f"ListenAddress {address}\n"
        "Port 22\n"
        f"HostKey {host_key}\n"
        f"PidFile {pidfile}\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "UseDNS no\n"
        "LogLevel VERBOSE\n"  # why a session ended (the p2p connection) is evidence; -E names the file
        "MaxStartups 100:30:200\n"
        "MaxSessions 100\n"
        "Subsystem sftp internal-sftp\n"
    )

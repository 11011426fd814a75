"""What several check groups ask of hosts and guests: a shell command, a TCP probe, qemu.conf, the disks."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

from lab.preflight.context import PreflightContext
from lab.preflight.ssh_mux import run_on
from lab.runtime.hosts import Host


def sh(host: Host, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """A command on the host whose failure the check judges itself (no exception on a non-zero exit);
    over the run's shared SSH connection to the host when there is one (see lab/preflight/ssh_mux.py)."""
    return run_on(host, command, timeout)


def key_values(text: str) -> dict[str, str]:
    """The KEY=VALUE lines of a probe's output (the probes print one fact per line)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def tcp_probe(host: Host, address: str, port: int, timeout_s: int = 2) -> str:
    """'open', 'closed' (refused: reachable, nothing listening) or 'blocked' (timeout or unreachable)."""
    for wait in (timeout_s, 3 * timeout_s):
        # The timeout covers bash's own start: on a TCG VM under load that alone took over 2 s and a
        # reachable port read as filtered. Only a second, longer silence counts as blocked.
        proc = sh(host, f"timeout {wait} bash -c 'exec 3<>/dev/tcp/{address}/{port}' 2>&1; echo rc=$?", timeout=25)
        if "rc=0" in proc.stdout:
            return "open"
        if "refused" in proc.stdout:
            return "closed"
    return "blocked"


def qemu_conf(host: Host) -> str:
    """libvirt's QEMU driver configuration on the host (migration ports, QEMU's user)."""
    return sh(host, "cat /etc/libvirt/qemu.conf").stdout


@dataclass(frozen=True)
class Disk:
    type: str  # file | block | network
    path: str | None  # file or device; for a network disk the source name
    server: str | None  # a network disk's server
    protocol: str | None
    cache: str | None
    target: str
    readonly: bool
    planned: bool = False  # the planned guest's disk: its directory exists, the file does not yet

    @property
    def directory(self) -> str:
        return (self.path or "").rsplit("/", 1)[0]


def disks(ctx: PreflightContext) -> list[Disk]:
    """The guest's disks that have a source (an empty CD-ROM has none); for a planned guest, its one disk."""
    if ctx.plan is not None:
        plan = ctx.plan
        path = f"{plan.storage_path}/planned-guest.qcow2"
        kind = ("network", "nfs") if plan.nfs_server else ("file", None)
        return [Disk(type=kind[0], path=path, server=plan.nfs_server, protocol=kind[1], cache="none", target="vda",
                     readonly=False, planned=True)]
    found = []
    for disk in ctx.domain_xml().findall("./devices/disk"):
        source = disk.find("source")
        driver = disk.find("driver")
        if source is None:
            continue
        host_el = source.find("host")
        found.append(Disk(type=disk.get("type"), path=source.get("file") or source.get("dev") or source.get("name"),
                          server=host_el.get("name") if host_el is not None else None,
                          protocol=source.get("protocol"), cache=driver.get("cache") if driver is not None else None,
                          target=disk.find("target").get("dev"), readonly=disk.find("readonly") is not None))
    return found

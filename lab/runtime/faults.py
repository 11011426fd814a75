"""What a backend offers to break a running lab on purpose: the fault injector's interface.

Suites ask for faults through this narrow interface and never learn how a backend does them.
Every process is found by the PID its own host recorded (a domain's pid file, a daemon's pid
file), never by name: on an embedded lab all hosts share one kernel, so a name matches the
other host's process too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lab.runtime.layout import MIGRATION_PORTS

LIBVIRT_PORTS = (22, 22)  # the p2p connection rides qemu+ssh
# What "shows up in seconds" means for a cut TCP connection: retransmissions give up after about
# 0.2 * (2^(6) - 1) = 12.6 s, an idle connection is probed after 5 s, every 2 s, 3 times.
FAST_TCP = {"net.ipv4.tcp_retries2": "5", "net.ipv4.tcp_keepalive_time": "5",
            "net.ipv4.tcp_keepalive_intvl": "2", "net.ipv4.tcp_keepalive_probes": "3"}


@dataclass(frozen=True)
class Cut:
    """Traffic dropped between two hosts on some TCP ports, in both directions, until healed."""
    host: str  # the host whose network namespace holds the rules
    peer_address: str  # traffic to and from this address is dropped
    ports: tuple[int, int]  # first and last TCP port on `host`'s side
    table: str  # the nftables table holding the rules (deleted to heal)

    def describe(self) -> str:
        return f"tcp ports {self.ports[0]}-{self.ports[1]} on {self.host} cut from {self.peer_address}"


class FaultInjector(Protocol):
    def qemu_pid(self, host: str, domain: str) -> int | None:
        """The PID in the host's own /run/libvirt/qemu/<domain>.pid, if that process is alive."""

    def kill_qemu(self, host: str, domain: str) -> int:
        """SIGKILL the domain's QEMU on `host` by the PID from its pid file; returns the PID."""

    def kill_daemon(self, host: str, daemon: str) -> int:
        """SIGKILL one of the host's daemons (libvirtd, virtlogd) by its recorded PID; returns it."""

    def freeze_daemon(self, host: str, daemon: str) -> int:
        """SIGSTOP the daemon by its recorded PID (it holds its state, answers nothing)."""

    def thaw_daemon(self, host: str, daemon: str) -> None:
        """SIGCONT a frozen daemon."""

    def restart_daemon(self, host: str, daemon: str) -> int:
        """Start a killed daemon again with the lab's own command line; returns the new PID."""

    def limit_memory(self, host: str, daemon: str, data_bytes: int | None) -> None:
        """Cap the data segment (RLIMIT_DATA) of the daemon and of what it starts from now on; None lifts it."""

    def data_bytes(self, host: str, daemon: str = "", domain: str = "") -> int:
        """Private writable memory (VmData) of a daemon, or of a domain's QEMU, now."""

    def cut(self, host: str, peer_address: str, ports: tuple[int, int]) -> Cut:
        """Drop TCP traffic between `host` and `peer_address` on `host`'s ports, both ways."""

    def end_connections(self, host: str, peer_address: str, ports: tuple[int, int]) -> int:
        """End (as the kernel does when TCP keepalive gives up) host's TCP connections with peer_address whose
        local port is in ports; returns how many."""

    def heal(self, cut: Cut) -> None:
        """Take a cut's rules away (idempotent)."""

    def set_tcp(self, host: str, settings: dict[str, str]) -> dict[str, str]:
        """Set sysctls in the host's network namespace; returns the previous values."""


__all__ = ["Cut", "FaultInjector", "FAST_TCP", "LIBVIRT_PORTS", "MIGRATION_PORTS"]

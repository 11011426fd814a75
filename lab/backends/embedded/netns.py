"""Network namespaces, bridges and veths, through iproute2."""
from __future__ import annotations

import os
import time
from pathlib import Path

from lab.errors import BackendError
from lab.util.process import ok, run


def _ip(*args: str, ns: str | None = None, check: bool = True):
    prefix = ["ip", "-n", ns] if ns else ["ip"]
    return run([*prefix, *args], check=check, error=BackendError)


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def list_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        return []


def link_exists(name: str, ns: str | None = None) -> bool:
    if ns:
        return ok(["ip", "-n", ns, "link", "show", "dev", name])
    return Path("/sys/class/net", name).exists()


def list_links(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    except FileNotFoundError:
        return []


def add_netns(name: str) -> None:
    _ip("netns", "add", name)


def add_bridge(name: str, ns: str | None = None, mtu: int = 1500, address: str | None = None) -> None:
    """No STP and no forward delay: a guest's tap must forward at once after migration.

    address: the bridge's own MAC, fixed. Without one the kernel gives a bridge the lowest MAC of its
    ports, so a host whose veth drew a MAC above a guest tap's (libvirt's fe:54:00:...) took the tap's
    MAC when the guest's tap joined; the migration's destination tap then has the same MAC on the other
    host, each host delivers frames for the other to itself, and the p2p connection between them died
    ("br0: received packet on eth0 with own address as source address" in dmesg).
    """
    extra = ["address", address] if address else []
    _ip("link", "add", name, *extra, "mtu", str(mtu), "type", "bridge", "stp_state", "0", "forward_delay", "0",
        ns=ns)
    _ip("link", "set", name, "up", ns=ns)


def add_address(dev: str, cidr: str, ns: str | None = None) -> None:
    _ip("addr", "add", cidr, "dev", dev, ns=ns)


def add_veth_into(root_side: str, ns: str, ns_side: str, bridge: str, ns_bridge: str, mtu: int) -> None:
    """A veth from the root bridge into namespace `ns`, enslaved to `ns_bridge` there."""
    tmp = root_side + "p"
    _ip("link", "add", root_side, "mtu", str(mtu), "type", "veth", "peer", "name", tmp)
    _ip("link", "set", root_side, "master", bridge, "up")
    _ip("link", "set", tmp, "netns", ns)
    _ip("link", "set", tmp, "name", ns_side, ns=ns)
    _ip("link", "set", ns_side, "master", ns_bridge, "up", ns=ns)


def delete_link(name: str) -> None:
    _ip("link", "del", name, check=False)


def netns_pids(name: str) -> list[int]:
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def delete_netns(name: str, veth_root_side: str | None = None, timeout: float = 10) -> None:
    """Delete a namespace and wait until its veth has really gone (ip returns before that)."""
    _ip("netns", "del", name, check=False)
    deadline = time.monotonic() + timeout
    while veth_root_side and link_exists(veth_root_side) and time.monotonic() < deadline:
        time.sleep(0.05)
    if veth_root_side and link_exists(veth_root_side):
        delete_link(veth_root_side)

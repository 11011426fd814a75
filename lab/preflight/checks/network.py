"""Network checks: the hosts reach each other, share a segment and an MTU, the migration ports and sshd
are open from the source, and each host's name resolves to its address on both."""
from __future__ import annotations

import ipaddress
import json
import re
import shlex

from lab.runtime.layout import MIGRATION_PORTS  # libvirt's own default, when qemu.conf sets none
from lab.preflight.checks.probes import qemu_conf, sh, tcp_probe
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result
from lab.runtime.hosts import Host



@check("reachable", "network")
def reachable(ctx: PreflightContext) -> CheckResult:
    bad = [f"{a.name} -> {b.name} ({b.address}:22) {state}" for a, b in ((ctx.src, ctx.dst), (ctx.dst, ctx.src))
           if (state := tcp_probe(a, b.address, 22)) != "open"]
    if bad:
        return result("reachable", FAIL, "; ".join(bad), "bring the link up / fix routing between the hosts")
    return result("reachable", PASS, f"{ctx.src.name} <-> {ctx.dst.name} both ways")


def _interface_of(host: Host, address: str) -> dict | None:
    """The interface that carries `address` on the host: name, MTU, up, and its network."""
    proc = sh(host, "ip -j -4 addr show")
    for link in json.loads(proc.stdout or "[]"):
        for info in link.get("addr_info", []):
            if info.get("local") == address:
                return {"ifname": link["ifname"], "mtu": link.get("mtu"), "up": "UP" in link.get("flags", []),
                        "network": str(ipaddress.ip_interface(f"{address}/{info['prefixlen']}").network)}
    return None


@check("same-segment", "network")
def same_segment(ctx: PreflightContext) -> CheckResult:
    a, b = _interface_of(ctx.src, ctx.src.address), _interface_of(ctx.dst, ctx.dst.address)
    if not a or not b:
        return result("same-segment", FAIL, f"address not configured: {ctx.src.name} {a}, {ctx.dst.name} {b}",
                      "configure the lab addresses on both hosts")
    if a["network"] != b["network"]:
        return result("same-segment", FAIL, f"{ctx.src.name} on {a['network']}, {ctx.dst.name} on {b['network']}",
                      "put both hosts on one L2 segment, or guests' addresses will not follow them")
    return result("same-segment", PASS, f"both on {a['network']} ({a['ifname']}, {b['ifname']})")


@check("mtu", "network")
def mtu(ctx: PreflightContext) -> CheckResult:
    a, b = _interface_of(ctx.src, ctx.src.address), _interface_of(ctx.dst, ctx.dst.address)
    if not a or not b:
        return result("mtu", FAIL, "cannot find the migration interfaces", "configure the lab addresses")
    if a["mtu"] != b["mtu"]:
        return result("mtu", FAIL, f"{ctx.src.name} {a['ifname']} mtu {a['mtu']}, {ctx.dst.name} {b['ifname']} mtu {b['mtu']}",
                      "set the same MTU on both migration interfaces")
    return result("mtu", PASS, f"mtu {a['mtu']} on both")


def migration_port_range(host: Host) -> tuple[int, int]:
    found = {k: int(v) for k, v in re.findall(r"^\s*(migration_port_m(?:in|ax))\s*=\s*(\d+)", qemu_conf(host), re.M)}
    return found.get("migration_port_min", MIGRATION_PORTS[0]), found.get("migration_port_max", MIGRATION_PORTS[1])


@check("migration-ports", "network")
def migration_ports(ctx: PreflightContext) -> CheckResult:
    """A closed port (refused) is fine, a filtered one (no answer) is not: QEMU listens there during the job."""
    low, high = migration_port_range(ctx.dst)
    probes = {port: tcp_probe(ctx.src, ctx.dst.address, port) for port in sorted({low, (low + high) // 2, high})}
    blocked = [str(p) for p, state in probes.items() if state == "blocked"]
    if blocked:
        return result("migration-ports", FAIL, f"{ctx.src.name} -> {ctx.dst.name} ports {', '.join(blocked)} "
                      f"of {low}-{high} are filtered", f"open TCP {low}-{high} on {ctx.dst.name}'s firewall")
    return result("migration-ports", PASS, f"{low}-{high} reachable from {ctx.src.name} (probed {', '.join(map(str, probes))})")


@check("daemon-port", "network")
def daemon_port(ctx: PreflightContext) -> CheckResult:
    state = tcp_probe(ctx.src, ctx.dst.address, 22)
    if state != "open":
        return result("daemon-port", FAIL, f"{ctx.dst.name}:22 (ssh, the qemu+ssh transport) is {state} from {ctx.src.name}",
                      f"start sshd on {ctx.dst.name} / open port 22")
    return result("daemon-port", PASS, f"{ctx.dst.name}:22 open from {ctx.src.name}")


@check("names", "network")
def names(ctx: PreflightContext) -> CheckResult:
    """libvirt hands the destination's hostname to the source QEMU: it must resolve, the same everywhere."""
    problems = []
    for host, other in ((ctx.src, ctx.dst), (ctx.dst, ctx.src)):
        hostname = sh(host, "hostname").stdout.strip()
        for viewer in (host, other):
            got = sh(viewer, f"getent hosts {shlex.quote(hostname)}").stdout.split()
            if not got or got[0] != host.address:
                problems.append(f"{hostname!r} resolves on {viewer.name} to {got[0] if got else 'nothing'}, "
                                f"expected {host.address}")
    if problems:
        return result("names", FAIL, "; ".join(problems), "add both hosts to /etc/hosts (or DNS) on both hosts")
    return result("names", PASS, f"{ctx.src.name} and {ctx.dst.name} resolve to their addresses on both hosts")

"""Preflight: is this host pair ready to live-migrate this guest?

Each check is a plain function over a PreflightContext returning a CheckResult
(name, status, what was seen, a one-line remedy). Checks only read: the one
exception is the shared-storage marker, a file written on one host, read on
the other and removed again, because nothing else proves two paths are the
same storage.
"""
from __future__ import annotations

import ipaddress
import json
import re
import shlex
import time
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

import libvirt

from lab.errors import LabError
from lab.runtime.hosts import Host

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
MEMORY_MARGIN_MIB = 128
DEFAULT_MIGRATION_PORTS = (49152, 49215)


@dataclass(frozen=True)
class CheckResult:
    name: str
    category: str
    status: str
    seen: str
    remedy: str = ""

    def line(self) -> str:
        text = f"{self.name}: {self.status.upper()}: {self.seen}"
        return text + (f" -> {self.remedy}" if self.remedy and self.status in (FAIL, WARN) else "")


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


Check = Callable[[PreflightContext], CheckResult]
CHECKS: dict[str, tuple[str, Check, bool]] = {}  # name -> (category, function, needs a guest)


def check(name: str, category: str, needs_guest: bool = False):
    def register(fn: Check) -> Check:
        CHECKS[name] = (category, fn, needs_guest)
        return fn
    return register


def _result(name: str, status: str, seen: str, remedy: str = "") -> CheckResult:
    return CheckResult(name, CHECKS[name][0], status, seen, remedy)


def _sh(host: Host, command: str, timeout: float = 20):
    return host.run(command, check=False, timeout=timeout)


# -- permission -------------------------------------------------------------

@check("ssh-access", "permission")
def ssh_access(ctx: PreflightContext) -> CheckResult:
    bad = []
    for host in (ctx.src, ctx.dst):
        proc = _sh(host, "id -un", timeout=25)
        if proc.returncode != 0:
            bad.append(f"{host.name}: {(proc.stderr.strip().splitlines() or ['exit %d' % proc.returncode])[-1]}")
    if bad:
        return _result("ssh-access", FAIL, "; ".join(bad), "fix the SSH key/user in the lab config; try `python -m lab ssh HOST`")
    return _result("ssh-access", PASS, f"ssh as {ctx.src.ssh_user} works on {ctx.src.name} and {ctx.dst.name}")


@check("libvirt-read-write", "permission")
def libvirt_read_write(ctx: PreflightContext) -> CheckResult:
    """A migration job needs read-write libvirt on both ends; a read-only connection refuses write-class calls."""
    cpu = "<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>"
    bad = []
    for host in (ctx.src, ctx.dst):
        try:
            ctx.conn(host).compareHypervisorCPU(None, "x86_64", None, None, cpu, 0)
        except libvirt.libvirtError as exc:
            bad.append(f"{host.name}: {exc.get_error_message()}")
        except LabError as exc:
            bad.append(str(exc))
    if bad:
        return _result("libvirt-read-write", FAIL, "; ".join(bad),
                       "connect read-write (no ?readonly / openReadOnly) as a user allowed to manage domains")
    return _result("libvirt-read-write", PASS, f"read-write libvirt on {ctx.src.name} and {ctx.dst.name}")


@check("p2p-reach", "permission")
def p2p_reach(ctx: PreflightContext) -> CheckResult:
    """The source's libvirtd must open the destination's URI itself (peer-to-peer)."""
    proc = _sh(ctx.src, f"virsh -c {shlex.quote(ctx.dst.libvirt_uri)} hostname", timeout=30)
    seen = proc.stdout.strip()
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return _result("p2p-reach", FAIL, f"{ctx.src.name} cannot open {ctx.dst.libvirt_uri}: {err}",
                       f"give {ctx.src.name}'s root SSH access to {ctx.dst.name} (key + known_hosts) and check its libvirtd")
    return _result("p2p-reach", PASS, f"{ctx.src.name} reaches {ctx.dst.name}'s libvirtd (hostname {seen})")


# -- clocks -------------------------------------------------------------------

CLOCK_SKEW_LIMIT_MS = 100  # beyond this, libvirt's downtime (dst resume minus src stop) is misleading
_CLOCK_PROBE = ("chronyc -n -c tracking 2>/dev/null | sed 's/^/chrony=/'; "
                "echo ntp=$(timedatectl show -p NTPSynchronized --value 2>/dev/null); "
                "echo boot=$(cat /proc/sys/kernel/random/boot_id); date +now=%s.%N")


def _clock_of(host: Host) -> dict:
    """The host's own word on its clock (chrony, else systemd), and its time within the ssh round trip."""
    sent = time.time()
    proc = _sh(host, _CLOCK_PROBE)
    back = time.time()
    seen = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    chrony = seen.get("chrony", "").split(",")
    state = {"sent": sent, "back": back, "now": float(seen["now"]) if seen.get("now") else None,
             "boot": seen.get("boot", "")}
    if len(chrony) >= 14:
        state["synced"] = chrony[13] == "Normal" and abs(float(chrony[4])) < 0.01
        state["how"] = f"chrony, reference {chrony[1]}, offset {float(chrony[4]) * 1000:.1f} ms"
    else:
        state["synced"] = seen.get("ntp") == "yes"
        state["how"] = f"NTPSynchronized={seen.get('ntp') or 'unknown'}, no chronyd answering"
    return state


@check("clock-sync", "network")
def clock_sync(ctx: PreflightContext) -> CheckResult:
    """libvirt's downtime is the destination's resume time minus the source's stop time: two clocks."""
    src, dst = _clock_of(ctx.src), _clock_of(ctx.dst)
    if src["boot"] and src["boot"] == dst["boot"]:
        return _result("clock-sync", PASS, f"{ctx.src.name} and {ctx.dst.name} run on one kernel: one clock")
    if src["now"] is None or dst["now"] is None:
        return _result("clock-sync", FAIL, "could not read both hosts' clocks over ssh", "check ssh-access first")
    # Each reading lies between its round trip's ends, so the skew lies in [low, high] for certain.
    low = (dst["now"] - dst["back"]) - (src["now"] - src["sent"])
    high = (dst["now"] - dst["sent"]) - (src["now"] - src["back"])
    how = f"{ctx.src.name}: {src['how']}; {ctx.dst.name}: {dst['how']}"
    remedy = ("run chrony (or systemd-timesyncd) on both hosts against one time server; "
              "libvirt's downtime figures subtract one host's clock from the other's")
    if low * 1000 > CLOCK_SKEW_LIMIT_MS or high * 1000 < -CLOCK_SKEW_LIMIT_MS:
        sure = min(abs(low), abs(high)) * 1000
        return _result("clock-sync", FAIL, f"{ctx.dst.name}'s clock is at least {sure:.0f} ms "
                       f"{'ahead of' if low > 0 else 'behind'} {ctx.src.name}'s ({how})", remedy)
    if not (src["synced"] and dst["synced"]):
        return _result("clock-sync", WARN, f"clocks within {max(abs(low), abs(high)) * 1000:.0f} ms of each "
                       f"other, but not both synchronized ({how})", remedy)
    return _result("clock-sync", PASS, how)


# -- network ----------------------------------------------------------------

def _tcp_probe(host: Host, address: str, port: int, timeout_s: int = 2) -> str:
    """'open', 'closed' (refused: reachable, nothing listening) or 'blocked' (timeout or unreachable)."""
    proc = _sh(host, f"timeout {timeout_s} bash -c 'exec 3<>/dev/tcp/{address}/{port}' 2>&1; echo rc=$?", timeout=25)
    out = proc.stdout
    if "rc=0" in out:
        return "open"
    if "refused" in out:
        return "closed"
    return "blocked"


@check("reachable", "network")
def reachable(ctx: PreflightContext) -> CheckResult:
    bad = [f"{a.name} -> {b.name} ({b.address}:22) {state}" for a, b in ((ctx.src, ctx.dst), (ctx.dst, ctx.src))
           if (state := _tcp_probe(a, b.address, 22)) != "open"]
    if bad:
        return _result("reachable", FAIL, "; ".join(bad), "bring the link up / fix routing between the hosts")
    return _result("reachable", PASS, f"{ctx.src.name} <-> {ctx.dst.name} both ways")


def _interface_of(host: Host, address: str) -> dict | None:
    proc = _sh(host, "ip -j -4 addr show")
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
        return _result("same-segment", FAIL, f"address not configured: {ctx.src.name} {a}, {ctx.dst.name} {b}",
                       "configure the lab addresses on both hosts")
    if a["network"] != b["network"]:
        return _result("same-segment", FAIL, f"{ctx.src.name} on {a['network']}, {ctx.dst.name} on {b['network']}",
                       "put both hosts on one L2 segment, or guests' addresses will not follow them")
    return _result("same-segment", PASS, f"both on {a['network']} ({a['ifname']}, {b['ifname']})")


@check("mtu", "network")
def mtu(ctx: PreflightContext) -> CheckResult:
    a, b = _interface_of(ctx.src, ctx.src.address), _interface_of(ctx.dst, ctx.dst.address)
    if not a or not b:
        return _result("mtu", FAIL, "cannot find the migration interfaces", "configure the lab addresses")
    if a["mtu"] != b["mtu"]:
        return _result("mtu", FAIL, f"{ctx.src.name} {a['ifname']} mtu {a['mtu']}, {ctx.dst.name} {b['ifname']} mtu {b['mtu']}",
                       "set the same MTU on both migration interfaces")
    return _result("mtu", PASS, f"mtu {a['mtu']} on both")


def _migration_ports(host: Host) -> tuple[int, int]:
    text = _sh(host, "cat /etc/libvirt/qemu.conf").stdout
    found = {k: int(v) for k, v in re.findall(r"^\s*(migration_port_m(?:in|ax))\s*=\s*(\d+)", text, re.M)}
    return found.get("migration_port_min", DEFAULT_MIGRATION_PORTS[0]), found.get("migration_port_max", DEFAULT_MIGRATION_PORTS[1])


@check("migration-ports", "network")
def migration_ports(ctx: PreflightContext) -> CheckResult:
    """A closed port (refused) is fine, a filtered one (no answer) is not: QEMU listens there during the job."""
    low, high = _migration_ports(ctx.dst)
    probes = {port: _tcp_probe(ctx.src, ctx.dst.address, port) for port in sorted({low, (low + high) // 2, high})}
    blocked = [str(p) for p, state in probes.items() if state == "blocked"]
    if blocked:
        return _result("migration-ports", FAIL, f"{ctx.src.name} -> {ctx.dst.name} ports {', '.join(blocked)} "
                       f"of {low}-{high} are filtered", f"open TCP {low}-{high} on {ctx.dst.name}'s firewall")
    return _result("migration-ports", PASS, f"{low}-{high} reachable from {ctx.src.name} (probed {', '.join(map(str, probes))})")


@check("daemon-port", "network")
def daemon_port(ctx: PreflightContext) -> CheckResult:
    state = _tcp_probe(ctx.src, ctx.dst.address, 22)
    if state != "open":
        return _result("daemon-port", FAIL, f"{ctx.dst.name}:22 (ssh, the qemu+ssh transport) is {state} from {ctx.src.name}",
                       f"start sshd on {ctx.dst.name} / open port 22")
    return _result("daemon-port", PASS, f"{ctx.dst.name}:22 open from {ctx.src.name}")


@check("names", "network")
def names(ctx: PreflightContext) -> CheckResult:
    """libvirt hands the destination's hostname to the source QEMU: it must resolve, the same everywhere."""
    problems = []
    for host, other in ((ctx.src, ctx.dst), (ctx.dst, ctx.src)):
        hostname = _sh(host, "hostname").stdout.strip()
        for viewer in (host, other):
            got = _sh(viewer, f"getent hosts {shlex.quote(hostname)}").stdout.split()
            if not got or got[0] != host.address:
                problems.append(f"{hostname!r} resolves on {viewer.name} to {got[0] if got else 'nothing'}, "
                                f"expected {host.address}")
    if problems:
        return _result("names", FAIL, "; ".join(problems), "add both hosts to /etc/hosts (or DNS) on both hosts")
    return _result("names", PASS, f"{ctx.src.name} and {ctx.dst.name} resolve to their addresses on both hosts")


# -- storage ----------------------------------------------------------------

def _disks(ctx: PreflightContext) -> list[dict]:
    disks = []
    for disk in ctx.domain_xml().findall("./devices/disk"):
        source = disk.find("source")
        driver = disk.find("driver")
        if source is None:
            continue
        host_el = source.find("host")
        disks.append({"type": disk.get("type"), "path": source.get("file") or source.get("dev") or source.get("name"),
                      "server": host_el.get("name") if host_el is not None else None,
                      "protocol": source.get("protocol"), "cache": driver.get("cache") if driver is not None else None,
                      "target": disk.find("target").get("dev"), "readonly": disk.find("readonly") is not None})
    return disks


@check("storage-mode", "storage", needs_guest=True)
def storage_mode(ctx: PreflightContext) -> CheckResult:
    disks = [d for d in _disks(ctx) if not d["readonly"]]
    if not disks:
        return _result("storage-mode", PASS, "no writable disks: nothing to share or copy")
    if ctx.storage_mode == "local":
        return _result("storage-mode", PASS, f"non-shared: {len(disks)} disk(s) will be copied (copy-storage)")
    problems, kinds = [], set()
    for d in disks:
        if d["type"] == "network" and d["protocol"] == "nfs":
            # Both hypervisors reach the same NFS export (QEMU's NFS driver): shared by construction.
            for host in (ctx.src, ctx.dst):
                if _tcp_probe(host, d["server"], 2049) != "open":
                    problems.append(f"NFS server {d['server']}:2049 not reachable from {host.name}")
            kinds.add(f"NFS (NFSv3 export on {d['server']}, QEMU NFS driver)")
            continue
        if d["type"] == "network":
            kinds.add(f"network ({d['protocol']})")
            continue
        directory = d["path"].rsplit("/", 1)[0]
        marker = f"{directory}/.preflight-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        wrote = _sh(ctx.src, f"test -e {shlex.quote(d['path'])} && echo {token} > {marker}")
        try:
            exists = _sh(ctx.dst, f"test -e {shlex.quote(d['path'])} && echo yes").stdout.strip() == "yes"
            seen = _sh(ctx.dst, f"cat {marker} 2>/dev/null").stdout.strip()
        finally:
            _sh(ctx.src, f"rm -f {marker}")
        if wrote.returncode != 0:
            problems.append(f"{d['path']} missing on {ctx.src.name}")
        elif not exists:
            problems.append(f"{d['path']} does not exist on {ctx.dst.name}")
        elif seen != token:
            problems.append(f"{d['path']}: a marker written on {ctx.src.name} is not seen on {ctx.dst.name}")
        kinds.add("shared file")
    if problems:
        return _result("storage-mode", FAIL, "shared storage expected, but " + "; ".join(problems),
                       "mount the same storage at the same path on both hosts, or migrate with storage: local (copy)")
    return _result("storage-mode", PASS, f"shared: {', '.join(sorted(kinds))}, the same storage on both hosts")


@check("storage-filesystem", "storage", needs_guest=True)
def storage_filesystem(ctx: PreflightContext) -> CheckResult:
    seen = []
    for d in _disks(ctx):
        if d["type"] == "network":
            seen.append(f"{d['target']}: {d['protocol']} (network disk)")
            continue
        directory = d["path"].rsplit("/", 1)[0]
        for host in (ctx.src, ctx.dst):
            fstype = _sh(host, f"stat -f -c %T {shlex.quote(directory)}").stdout.strip() or "missing"
            seen.append(f"{host.name} {directory}: {fstype}")
    if any(s.endswith("missing") for s in seen):
        return _result("storage-filesystem", FAIL, "; ".join(seen), "create the disk directory on both hosts")
    return _result("storage-filesystem", PASS, "; ".join(seen) or "no disks")


def _qemu_user(host: Host) -> str:
    text = _sh(host, "cat /etc/libvirt/qemu.conf").stdout
    found = re.findall(r'^\s*user\s*=\s*"([^"]+)"', text, re.M)
    return found[-1] if found else "libvirt-qemu"


@check("storage-writable", "storage", needs_guest=True)
def storage_writable(ctx: PreflightContext) -> CheckResult:
    problems = []
    for d in _disks(ctx):
        if d["type"] == "network" or d["readonly"]:
            continue
        directory = d["path"].rsplit("/", 1)[0]
        host = ctx.dst
        user = _qemu_user(host)
        proc = _sh(host, f"runuser -u {shlex.quote(user)} -- test -w {shlex.quote(directory)}")
        if proc.returncode != 0:
            problems.append(f"{directory} on {host.name} is not writable by QEMU's user {user}")
    if problems:
        return _result("storage-writable", FAIL, "; ".join(problems), "fix ownership/permissions (or SELinux virt_use_nfs)")
    return _result("storage-writable", PASS, f"disk directories writable by QEMU on {ctx.dst.name}")


@check("destination-room", "storage", needs_guest=True)
def destination_room(ctx: PreflightContext) -> CheckResult:
    if ctx.storage_mode != "local":
        return _result("destination-room", PASS, "shared storage: nothing is copied")
    need, directory = 0, None
    for d in _disks(ctx):
        if d["type"] != "file" or d["readonly"]:
            continue
        info = json.loads(_sh(ctx.src, f"qemu-img info -U --output=json {shlex.quote(d['path'])}").stdout or "{}")
        need += int(info.get("virtual-size", 0))
        directory = d["path"].rsplit("/", 1)[0]
    if not directory:
        return _result("destination-room", PASS, "no file disks to copy")
    free = int(_sh(ctx.dst, f"df -B1 --output=avail {shlex.quote(directory)} | tail -1").stdout.strip() or 0)
    if free < need:
        return _result("destination-room", FAIL, f"{ctx.dst.name}:{directory} has {free >> 20} MiB free, "
                       f"disks need {need >> 20} MiB", f"free space on {ctx.dst.name}")
    return _result("destination-room", PASS, f"{free >> 20} MiB free on {ctx.dst.name}, disks need {need >> 20} MiB")


# -- destination resources --------------------------------------------------

@check("destination-memory", "resources", needs_guest=True)
def destination_memory(ctx: PreflightContext) -> CheckResult:
    need_mib = ctx.domain().maxMemory() // 1024
    avail_kib = int(_sh(ctx.dst, "awk '/^MemAvailable:/ {print $2}' /proc/meminfo").stdout.strip() or 0)
    avail_mib = avail_kib // 1024
    if avail_mib < need_mib + MEMORY_MARGIN_MIB:
        return _result("destination-memory", FAIL, f"{ctx.dst.name} has {avail_mib} MiB available, guest needs "
                       f"{need_mib} MiB + {MEMORY_MARGIN_MIB} MiB margin", f"free memory on {ctx.dst.name} or pick another host")
    return _result("destination-memory", PASS, f"{avail_mib} MiB available on {ctx.dst.name}, guest needs {need_mib} MiB")


@check("destination-vcpus", "resources", needs_guest=True)
def destination_vcpus(ctx: PreflightContext) -> CheckResult:
    root = ctx.domain_xml()
    vcpus = int(root.findtext("vcpu") or 1)
    virt = root.get("type")
    limit = ctx.conn(ctx.dst).getMaxVcpus(virt)
    host_cpus = ctx.conn(ctx.dst).getInfo()[2]
    if vcpus > limit:
        return _result("destination-vcpus", FAIL, f"guest has {vcpus} vCPUs, {ctx.dst.name} allows {limit} for {virt}",
                       "reduce the guest's vCPUs")
    if vcpus > host_cpus:
        return _result("destination-vcpus", WARN, f"guest has {vcpus} vCPUs, {ctx.dst.name} has {host_cpus} CPUs (overcommit)",
                       "expect slower guests and longer migrations")
    return _result("destination-vcpus", PASS, f"{vcpus} vCPU(s) <= {host_cpus} CPUs on {ctx.dst.name}")


def _cpu_verdict(conn, root: ET.Element) -> int:
    cpu = root.find("cpu")
    if cpu is None:
        return libvirt.VIR_CPU_COMPARE_IDENTICAL
    return conn.compareHypervisorCPU(root.findtext("devices/emulator"), "x86_64",
                                     root.find("os/type").get("machine"), root.get("type"), ET.tostring(cpu, "unicode"), 0)


@check("cpu-model", "resources", needs_guest=True)
def cpu_model(ctx: PreflightContext) -> CheckResult:
    """The guest CPU must be usable on the destination, and back on the source for ping-pong."""
    root = ctx.domain_xml()
    model = root.findtext("cpu/model") or root.find("cpu").get("mode") if root.find("cpu") is not None else "default"
    refused = []
    for host in (ctx.dst, ctx.src):
        if _cpu_verdict(ctx.conn(host), root) == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            refused.append(host.name)
    if refused:
        return _result("cpu-model", FAIL, f"CPU model {model} is refused by {', '.join(refused)} "
                       f"(libvirt hypervisor CPU comparison)", "use a CPU model both hosts can run (e.g. a baseline)")
    return _result("cpu-model", PASS, f"CPU model {model} accepted by {ctx.dst.name} and back by {ctx.src.name}")


@check("machine-type", "resources", needs_guest=True)
def machine_type(ctx: PreflightContext) -> CheckResult:
    root = ctx.domain_xml()
    machine = root.find("os/type").get("machine")
    caps = ET.fromstring(ctx.conn(ctx.dst).getCapabilities())
    known = {m.text for m in caps.iter("machine")} | {m.get("canonical") for m in caps.iter("machine")}
    if machine not in known:
        return _result("machine-type", FAIL, f"machine type {machine} is not supported by {ctx.dst.name}'s QEMU",
                       "upgrade the destination's QEMU or use an older machine type")
    return _result("machine-type", PASS, f"{machine} supported on {ctx.dst.name}")


@check("versions", "resources")
def versions(ctx: PreflightContext) -> CheckResult:
    s, d = ctx.conn(ctx.src), ctx.conn(ctx.dst)
    fmt = lambda v: f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"  # noqa: E731
    problems = []
    if d.getVersion() < s.getVersion():
        problems.append(f"QEMU {fmt(d.getVersion())} on {ctx.dst.name} is older than {fmt(s.getVersion())}")
    if d.getLibVersion() < s.getLibVersion():
        problems.append(f"libvirt {fmt(d.getLibVersion())} on {ctx.dst.name} is older than {fmt(s.getLibVersion())}")
    if problems:
        return _result("versions", FAIL, "; ".join(problems), "upgrade the destination first")
    return _result("versions", PASS, f"QEMU {fmt(d.getVersion())}, libvirt {fmt(d.getLibVersion())} on "
                   f"{ctx.dst.name} >= {ctx.src.name}")


# -- VM state -----------------------------------------------------------------

@check("vm-running", "vm", needs_guest=True)
def vm_running(ctx: PreflightContext) -> CheckResult:
    state = ctx.domain().state()[0]
    names = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
             libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed"}
    if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
        return _result("vm-running", FAIL, f"{ctx.guest} is {names.get(state, state)} on {ctx.src.name}",
                       "start it, or use cold (offline) migration")
    return _result("vm-running", PASS, f"{ctx.guest} is {names[state]} on {ctx.src.name}")


@check("vm-persistent", "vm", needs_guest=True)
def vm_persistent(ctx: PreflightContext) -> CheckResult:
    if not ctx.domain().isPersistent():
        # The harness migrates with --persistent --undefinesource: a transient guest would not
        # survive its next stop on the destination, so this is a fail, not a warning.
        return _result("vm-persistent", FAIL, f"{ctx.guest} is transient: it exists nowhere once it stops",
                       "define it (virsh define) before migrating")
    return _result("vm-persistent", PASS, f"{ctx.guest} has a persistent definition")


def _migration_blockers(root: ET.Element) -> list[str]:
    blockers = []
    for dev in root.findall("./devices/hostdev"):
        if dev.get("type") != "usb":
            blockers.append(f"host device ({dev.get('type')}) passthrough")
    for shmem in root.findall("./devices/shmem"):
        model = shmem.find("model").get("type") if shmem.find("model") is not None else "ivshmem"
        if model == "ivshmem" or shmem.get("role") != "master":
            blockers.append(f"shmem {shmem.get('name')!r} ({model}, role {shmem.get('role') or 'default'})")
    for fs in root.findall("./devices/filesystem"):
        if (fs.find("driver") is not None and fs.find("driver").get("type") == "virtiofs"):
            blockers.append("virtiofs filesystem")
    for feature in root.findall("./cpu/feature"):
        if feature.get("name") == "invtsc" and feature.get("policy") in ("require", "force"):
            blockers.append("invtsc CPU feature")
    return blockers


@check("vm-devices", "vm", needs_guest=True)
def vm_devices(ctx: PreflightContext) -> CheckResult:
    blockers = _migration_blockers(ctx.domain_xml())
    if blockers:
        return _result("vm-devices", FAIL, f"{ctx.guest} has devices that block migration: {'; '.join(blockers)}",
                       "detach them before migrating")
    return _result("vm-devices", PASS, "no device that blocks migration")


@check("disk-cache", "vm", needs_guest=True)
def disk_cache(ctx: PreflightContext) -> CheckResult:
    """On shared storage only cache=none/directsync is safe: the destination must not read stale host cache."""
    if ctx.storage_mode == "local":
        return _result("disk-cache", PASS, "non-shared: disks are copied, any cache mode is fine")
    bad = [f"{d['target']} cache={d['cache'] or 'default'}" for d in _disks(ctx)
           if not d["readonly"] and d["type"] == "file" and d["cache"] not in ("none", "directsync")]
    if bad:
        return _result("disk-cache", FAIL, f"unsafe cache mode on shared storage: {', '.join(bad)}",
                       "set <driver cache='none'/> on shared disks")
    return _result("disk-cache", PASS, "writable shared disks use cache=none/directsync")


# -- migration parameters ----------------------------------------------------------

@check("max-downtime", "parameters", needs_guest=True)
def max_downtime(ctx: PreflightContext) -> CheckResult:
    current = int(ctx.domain().migrateGetMaxDowntime(0))
    if ctx.max_downtime_ms is not None and current != ctx.max_downtime_ms:
        return _result("max-downtime", FAIL, f"max downtime reads back {current} ms, configured {ctx.max_downtime_ms} ms",
                       f"virsh migrate-setmaxdowntime {ctx.guest} {ctx.max_downtime_ms}")
    return _result("max-downtime", PASS, f"max downtime {current} ms" +
                   (" as configured" if ctx.max_downtime_ms is not None else " (nothing configured to compare)"))


UNLIMITED_MIBS = (2**63 - 1) >> 20  # what libvirt reads back when no limit is set


@check("bandwidth", "parameters", needs_guest=True)
def bandwidth(ctx: PreflightContext) -> CheckResult:
    """0 configured means unlimited."""
    current = int(ctx.domain().migrateGetMaxSpeed(0))
    unlimited = current >= UNLIMITED_MIBS
    shown = "unlimited" if unlimited else f"{current} MiB/s"
    wanted = ctx.bandwidth_mibs
    if wanted is not None and not (unlimited if wanted == 0 else current == wanted):
        want = "unlimited (0)" if wanted == 0 else f"{wanted} MiB/s"
        return _result("bandwidth", FAIL, f"bandwidth reads back {shown}, configured {want}",
                       f"virsh migrate-setspeed {ctx.guest} {wanted}")
    return _result("bandwidth", PASS, f"bandwidth limit {shown}" +
                   (" as configured" if ctx.bandwidth_mibs is not None else " (nothing configured to compare)"))


# -- accelerator ----------------------------------------------------------------------

@check("accelerator", "accelerator")
def accelerator(ctx: PreflightContext) -> CheckResult:
    """KVM as probed by the lab (booting a guest, not trusting /dev/kvm), and what the guest asks for."""
    accel = {h.name: ctx.accelerators.get(h.name, "unknown") for h in (ctx.src, ctx.dst)}
    wants = ctx.domain_xml().get("type") if ctx.guest else None
    if wants == "kvm" and any(a != "kvm" for a in accel.values()):
        return _result("accelerator", FAIL, f"{ctx.guest} needs KVM, but the probe found {accel}",
                       "fix KVM on the hosts (module, nested virtualization) or run the guest under TCG")
    if any(a == "tcg" for a in accel.values()):
        return _result("accelerator", WARN, f"hosts run guests under TCG ({accel}): KVM did not boot a guest",
                       "timings are TCG's, not KVM's; use a host with working KVM for KVM figures")
    return _result("accelerator", PASS, f"KVM usable on both ({accel})")


_NESTED_PROBE = ("v=$(systemd-detect-virt --vm 2>/dev/null); [ -n \"$v\" ] || "
                 "v=$(grep -qw hypervisor /proc/cpuinfo && echo unknown || echo none); echo virt=$v; "
                 "echo flag=$(grep -m1 -owE 'vmx|svm' /proc/cpuinfo); "
                 "echo kvm=$(test -c /dev/kvm && echo yes || echo no)")


def _virtualization_of(host: Host) -> dict:
    """What a host is (bare metal or which VM), the hardware virtualization flag its CPU shows, /dev/kvm."""
    proc = _sh(host, _NESTED_PROBE)
    seen = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {"virt": seen.get("virt") or "none", "flag": seen.get("flag", ""), "kvm": seen.get("kvm") == "yes"}


@check("nested", "accelerator")
def nested(ctx: PreflightContext) -> CheckResult:
    """Hosts that are VMs run KVM guests only with nested virtualization: their CPU must show vmx/svm."""
    facts = {h.name: _virtualization_of(h) for h in (ctx.src, ctx.dst)}
    vms = {name: f for name, f in facts.items() if f["virt"] != "none"}
    if not vms:
        return _result("nested", PASS, f"{ctx.src.name} and {ctx.dst.name} are bare metal: no nesting involved")
    probed_kvm = all(ctx.accelerators.get(name) == "kvm" for name in facts)
    # KVM that works without vmx/svm in a VM is para-virtualized nesting (PVM); the lab's probe vouches for it.
    off = {name: f for name, f in vms.items() if not (f["kvm"] and (f["flag"] or probed_kvm))}
    seen = "; ".join(f"{name}: {f['virt']} VM, CPU flag {f['flag'] or 'none'}, /dev/kvm {'yes' if f['kvm'] else 'no'}"
                     for name, f in facts.items())
    if off and ctx.nested_required:
        no_flag = [name for name, f in off.items() if not f["flag"]]
        remedy = ("on the machine running the host VMs: load kvm_intel/kvm_amd with nested=1 and give the VMs a "
                  "host-passthrough CPU" if no_flag else
                  f"load kvm_intel or kvm_amd on {', '.join(off)} (the CPU flag is there, /dev/kvm is not)")
        return _result("nested", FAIL, f"nested virtualization is off but needed ({ctx.nested_required}): {seen}",
                       remedy + "; or set accelerator: auto to run guests under TCG")
    if off:
        return _result("nested", PASS, f"not needed (guests run under TCG here): {seen}")
    return _result("nested", PASS, f"nested virtualization on: {seen}")


# -- running ----------------------------------------------------------------------------

def context_for(lab, src: str | None = None, dst: str | None = None, guest: str | None = None,
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
        mode = "local" if str(lab.storage_path("local")) + "/" in xml else "shared" if mode == "local" else mode
    accel = {h.name: lab.accelerator for h in lab.hosts}
    expected.setdefault("nested_required", nested_need(lab))
    return PreflightContext(source, destination, guest, mode, accelerators=accel, **expected)


def nested_need(lab) -> str:
    """Why this lab needs KVM inside its hosts, or "" (then hosts without it run guests under TCG)."""
    if lab.config.accelerator == "kvm":
        return "lab.yaml accelerator: kvm"
    if lab.state.backend == "vagrant" and lab.state.extra.get("driver") == "kvm":
        return "the Vagrant lab runs its hypervisor VMs with driver kvm for nested KVM"
    if lab.accelerator == "kvm":
        return "the lab's probe chose KVM for its guests"
    return ""


def run_preflight(ctx: PreflightContext, only: list[str] | None = None, workers: int = 8) -> list[CheckResult]:
    """Every check (or those named), in parallel; a check that errors is a fail with the error as seen."""
    names = only or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise LabError(f"unknown preflight check {unknown[0]!r} (known: {', '.join(CHECKS)})")

    def run_one(name: str) -> CheckResult:
        category, fn, needs_guest = CHECKS[name]
        if needs_guest and not ctx.guest:
            return CheckResult(name, category, SKIP, "needs a guest (--guest NAME)")
        try:
            return fn(ctx)
        except (libvirt.libvirtError, LabError, OSError, ValueError) as exc:
            text = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
            return CheckResult(name, category, FAIL, f"check could not run: {text}", "see the message; fix and rerun")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_one, names))


def table(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    rows = [f"{'check':<{width}}  {'status':<6}  seen / remedy"]
    for r in results:
        rows.append(f"{r.name:<{width}}  {r.status.upper():<6}  {r.seen}")
        if r.remedy and r.status in (FAIL, WARN):
            rows.append(f"{'':<{width}}  {'':<6}  -> {r.remedy}")
    return "\n".join(rows)


def as_json(results: list[CheckResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)



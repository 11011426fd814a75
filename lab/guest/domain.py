"""A lab guest: libvirt domain XML, lifecycle, and the probes attached to it."""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt

from lab.errors import GuestError
from lab.guest.addresses import AddressPool, mac_for
from lab.guest.control import AgentControl
from lab.runtime.hosts import Host
from lab.guest.probes import EchoProber, HeartbeatReceiver

EMULATOR = "/usr/bin/qemu-system-x86_64"
CTL_PORT = 7777
_serial = itertools.count(1)


@dataclass(frozen=True)
class GuestConfig:
    name: str
    memory_mib: int
    vcpus: int
    address: str
    prefixlen: int
    runner: str
    heartbeat_port: int
    heartbeat_us: int
    kernel: str
    initrd: str
    domain_type: str = "qemu"
    cpu_model: str = "qemu64"
    disk: str | None = None
    disk_format: str = "qcow2"
    bridge: str = "br0"
    emulator: str = EMULATOR
    machine: str = "pc"
    disk_cache: str = "none"
    disk_nfs_host: str | None = None  # disk is `disk` on this NFS server, through QEMU's NFS driver
    extra_devices: str = ""  # raw device XML, for tests that need an unusual guest
    boot_timeout_s: float = 90.0
    agent_timeout_s: float = 10.0
    fill_mibs: float = 0.0  # the lab's measured memory fill speed (MiB/s); 0: not measured (embedded)

    @property
    def mac(self) -> str:
        return mac_for(self.address)

    @property
    def cmdline(self) -> str:
        # loglevel=5, not quiet: a soft lockup's registers and call trace (printed at the default level)
        # reach the serial log, so a stalled guest is diagnosed from its evidence; boot adds two lines.
        return (f"console=ttyS0 loglevel=5 panic=-1 lab.name={self.name} lab.ip={self.address}/{self.prefixlen} "
                f"lab.runner={self.runner} lab.hb_port={self.heartbeat_port} lab.hb_us={self.heartbeat_us} "
                f"lab.ctl_port={CTL_PORT}")


def domain_xml(cfg: GuestConfig) -> str:
    disk = ""
    if cfg.disk and cfg.disk_nfs_host:
        # identity: QEMU's libnfs must present root to the export (ganesha sees no other owner).
        disk = (f"<disk type='network' device='disk'><driver name='qemu' type='{cfg.disk_format}' cache='{cfg.disk_cache}'/>"
                f"<source protocol='nfs' name='{escape(cfg.disk)}'><host name='{cfg.disk_nfs_host}'/>"
                f"<identity user='root' group='root'/></source><target dev='vda' bus='virtio'/></disk>")
    elif cfg.disk:
        disk = (f"<disk type='file' device='disk'><driver name='qemu' type='{cfg.disk_format}' cache='{cfg.disk_cache}'/>"
                f"<source file='{escape(cfg.disk)}'/><target dev='vda' bus='virtio'/></disk>")
    return f"""<domain type='{cfg.domain_type}'>
  <name>{escape(cfg.name)}</name>
  <memory unit='MiB'>{cfg.memory_mib}</memory>
  <vcpu>{cfg.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='{cfg.machine}'>hvm</type>
    <kernel>{escape(cfg.kernel)}</kernel>
    <initrd>{escape(cfg.initrd)}</initrd>
    <cmdline>{escape(cfg.cmdline)}</cmdline>
  </os>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>{cfg.cpu_model}</model></cpu>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{cfg.emulator}</emulator>
    {disk}
    <interface type='bridge'>
      <source bridge='{cfg.bridge}'/>
      <mac address='{cfg.mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='/var/log/libvirt/qemu/{escape(cfg.name)}.serial' append='on'/><target port='0'/></serial>
    <console type='file'><source path='/var/log/libvirt/qemu/{escape(cfg.name)}.serial' append='on'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
    {cfg.extra_devices}
  </devices>
</domain>
"""


PACE_FACTOR, PACE_EXTRA_S = 4, 10  # the margin on a measured fill speed: 4x the time it needs, plus 10 s


def paced_wait_s(mib: float, fill_mibs: float) -> float:
    """How long an agent command touching `mib` of the guest's memory may take at the lab's measured fill
    speed (MiB/s; the Vagrant lab measures it in each boot, at the suites' 32 MiB): four times the time that
    speed needs, as the shared runner's load swings about that much within a run, plus 10 s for the
    round trip. 0 where nothing was measured (the embedded lab): the caller's timeout stands."""
    if fill_mibs <= 0 or mib <= 0:
        return 0.0
    return PACE_EXTRA_S + PACE_FACTOR * mib / fill_mibs


@dataclass
class Guest:
    """A running lab guest and the runner-side probes attached to it."""
    config: GuestConfig
    host: Host  # where it runs now
    heartbeats: HeartbeatReceiver
    control: AgentControl
    boot_id: str = ""
    probes: list = field(default_factory=list)
    storage: str = "shared"
    filled_mib: int = 0  # the last `fill`'s size (paces verify)
    dirty_region_mib: int = 0  # the last `dirty`'s sweep region (paces oracle, which scans it)
    dirty_rate_mibs: float = 0.0  # the last `dirty`'s rate: the oracle's sweep must advance while it is > 0
    last_oracle: dict | None = None  # the oracle's last reading (integrity.memory_oracle), to see it advance
    serial_reported: set = field(default_factory=set)  # oracle lines of its console already told (one move each)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def address(self) -> str:
        return self.config.address

    def domain(self, host: Host | None = None) -> libvirt.virDomain:
        host = host or self.host
        try:
            return host.connect().lookupByName(self.name)
        except libvirt.libvirtError as exc:
            raise GuestError(f"{self.name}: not found on {host.name}: {exc.get_error_message()}") from None

    def agent(self, cmd: str, *args: object, timeout: float | None = None) -> dict[str, str]:
        """An agent command; the wait is at least the lab's agent_timeout_s (slow labs raise it) and,
        where the lab measured its guests' fill speed, what the memory the command touches needs."""
        wait = max(timeout or 0, self.config.agent_timeout_s, self._paced_s(cmd, args))
        return self.control.command(cmd, *args, timeout=wait)

    def _paced_s(self, cmd: str, args: tuple) -> float:
        # fill writes MIB and verify reads it back; dirty maps its region and oracle scans it.
        if cmd == "fill" and len(args) >= 2:
            self.filled_mib = int(args[1])
        elif cmd == "dirty" and len(args) >= 2:
            self.dirty_rate_mibs, self.dirty_region_mib = float(args[0]), int(args[1])
        if cmd in ("fill", "verify"):
            return paced_wait_s(self.filled_mib, self.config.fill_mibs)
        if cmd in ("dirty", "oracle"):
            return paced_wait_s(self.dirty_region_mib, self.config.fill_mibs)
        return 0.0

    def info(self) -> dict[str, str]:
        return self.agent("info")

    def wait_ready(self, timeout: float | None = None) -> float:
        """Seconds until the first heartbeat arrived; then the agent must answer `info`."""
        timeout = timeout or self.config.boot_timeout_s
        started = time.monotonic()
        if not self.heartbeats.first.wait(timeout):
            raise GuestError(f"{self.name}: no heartbeat within {timeout:.0f} s on {self.host.name} "
                             f"(serial log: {self.host.name}:/var/log/libvirt/qemu/{self.name}.serial)")
        first = time.monotonic() - started
        self.boot_id = self.info()["boot_id"]
        return first

    def echo_prober(self, interval_us: int = 1000) -> EchoProber:
        prober = EchoProber(self.config.runner, self.address, CTL_PORT, interval_us)
        self.probes.append(prober)
        return prober

    def locate(self, hosts: tuple[Host, ...]) -> list[Host]:
        """Hosts on which this guest is running now (more than one is a split brain)."""
        found = []
        for host in hosts:
            try:
                dom = host.connect().lookupByName(self.name)
                if dom.isActive():
                    found.append(host)
            except libvirt.libvirtError:
                continue
        return found


def unique_guest_name(prefix: str = "g") -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{prefix}-{worker}-{os.getpid()}-{next(_serial)}"


def create_guest(lab, host: Host, *, name: str | None = None, memory_mib: int | None = None,
                 with_disk: bool = True, cpu_model: str | None = None, wait: bool = True,
                 storage: str | None = None, emulator: str = EMULATOR, start: bool = True,
                 transient: bool = False, disk_mib: int | None = None, disk_dir: str | None = None,
                 **overrides) -> Guest:
    """Define and start a fresh guest on `host`; its disk lives on the lab's storage path.

    `overrides` set GuestConfig fields (vcpus, machine, disk_cache, domain_type, extra_devices, ...);
    start=False only defines it, transient=True starts it without a persistent definition.
    """
    name = name or unique_guest_name()
    pool = AddressPool(lab.dir, lab.config.network.guest_range)
    address = pool.allocate(name)
    heartbeats = HeartbeatReceiver(lab.runner_address)
    control = AgentControl(lab.runner_address, address, CTL_PORT)
    storage = lab.resolve_storage(storage)
    directory = disk_dir or str(lab.storage_path(storage))
    disk = f"{directory}/{name}.qcow2" if with_disk else None
    nfs_host = lab.nfs_address if storage == "nfs" else None
    cfg = GuestConfig(
        name=name, memory_mib=memory_mib or lab.config.guest.memory_mib, vcpus=lab.config.guest.vcpus,
        address=address, prefixlen=lab.config.network.prefixlen, runner=lab.runner_address,
        heartbeat_port=heartbeats.port, heartbeat_us=lab.config.guest.heartbeat_us,
        kernel=lab.image.kernel, initrd=lab.image.initrd, domain_type=lab.domain_type,
        cpu_model=cpu_model or lab.config.guest.cpu_model, machine=lab.config.guest.machine,
        disk=disk, emulator=emulator, disk_nfs_host=nfs_host,
        boot_timeout_s=lab.config.guest.boot_timeout_s, agent_timeout_s=lab.config.guest.agent_timeout_s,
        fill_mibs=lab.state.fill_mibs)
    if overrides:
        cfg = replace(cfg, **overrides)
    guest = Guest(cfg, host, heartbeats, control, storage=storage)
    try:
        if disk:
            target = f"nfs://{nfs_host}{disk}" if nfs_host else disk  # NFS: created over the wire too
            host.run(f"qemu-img create -q -f qcow2 {target} {disk_mib or lab.config.guest.disk_mib}M")
        try:
            if transient:
                host.connect().createXML(domain_xml(cfg), 0)
            else:
                dom = host.connect().defineXML(domain_xml(cfg))
                if start:
                    dom.create()
        except libvirt.libvirtError as exc:
            raise GuestError(f"{name}: cannot start on {host.name}: {exc.get_error_message()}") from None
        if wait and start:
            guest.wait_ready()
    except BaseException:
        remove_guest(lab, guest)
        raise
    return guest


def remove_guest(lab, guest: Guest) -> None:
    """Destroy and undefine the guest wherever it is, delete its disk, free its address."""
    for host in lab.hosts:
        try:
            dom = host.connect().lookupByName(guest.name)
        except libvirt.libvirtError:
            continue
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            pass
    if guest.config.disk and guest.config.disk_nfs_host:
        Path(guest.config.disk).unlink(missing_ok=True)  # cleanup only: the export's directory, seen from the runner
    elif guest.config.disk:
        for host in lab.hosts if guest.storage == "local" else lab.hosts[:1]:
            host.run(f"rm -f {guest.config.disk}", check=False)
    for probe in guest.probes:
        probe.close()
    guest.heartbeats.close()
    guest.control.close()
    AddressPool(lab.dir, lab.config.network.guest_range).release(guest.address)


def serial_log_path(lab, host: Host, name: str) -> Path:
    """Where the embedded lab keeps a guest's serial log, seen from the runner."""
    return lab.dir / "hosts" / host.name / "log-libvirt" / "qemu" / f"{name}.serial"

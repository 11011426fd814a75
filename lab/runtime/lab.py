"""The running lab as the suites see it: hosts, accelerator, storage, paths."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import libvirt

from lab.config.lab import LabConfig
from lab.errors import LabError, StateError
from lab.runtime.hosts import Host
from lab.runtime.layout import LabLayout
from lab.runtime.state import ImageRecord, LabState


@dataclass(frozen=True)
class Storage:
    mode: str  # shared | local | nfs
    path: Path  # where guests' disks live, the same path on every host
    shared: bool


@dataclass(frozen=True)
class Lab:
    config: LabConfig
    state: LabState
    hosts: tuple[Host, ...]
    runner_address: str
    storage: Storage
    dir: Path

    @property
    def accelerator(self) -> str:
        return self.state.accelerator

    @property
    def domain_type(self) -> str:
        return "kvm" if self.state.accelerator == "kvm" else "qemu"

    @property
    def layout(self) -> LabLayout:
        return self.state.layout

    @property
    def image(self) -> ImageRecord:
        if self.state.image is None:
            raise StateError(f"lab {self.state.name!r} has no guest image recorded: run `python -m lab up`")
        return self.state.image

    @property
    def nfs_address(self) -> str | None:
        return self.state.nfs.address if self.state.nfs else None

    @property
    def server_logs(self) -> dict[str, Path]:
        """Logs the lab's own servers keep on this machine, kept as evidence: the embedded NFS server's and
        each embedded host's sshd (the p2p connection rides it)."""
        logs = {f"{h.name}-sshd.log": self.layout.host_dir(h.name) / "sshd.log" for h in self.state.hosts
                if self.state.backend == "embedded"}
        if self.state.nfs is not None:
            logs["nfs-ganesha.log"] = self.layout.host_dir("nfs") / "ganesha" / "ganesha.log"
        return logs

    @property
    def nested_kvm_reason(self) -> str:
        """Why the lab made its hosts as VMs that need KVM inside them, or "" (only Vagrant's driver kvm does)."""
        if self.state.vagrant is not None and self.state.vagrant.driver == "kvm":
            return "the Vagrant lab runs its hypervisor VMs with driver kvm for nested KVM"
        return ""

    def resolve_storage(self, wanted: str | None) -> str:
        """'shared' means the lab's shared storage: the NFS export when the lab runs storage: nfs."""
        wanted = wanted or self.storage.mode
        return "nfs" if wanted == "shared" and self.storage.mode == "nfs" else wanted

    def needs_unsafe(self, storage: str) -> bool:
        """The embedded shared directory is shared, but libvirt cannot tell (so VIR_MIGRATE_UNSAFE); NFS it can."""
        return self.resolve_storage(storage) == "shared"

    def storage_path(self, mode: str) -> Path:
        """Where disks live: one shared directory, a per-host one at the same path, or the NFS export."""
        return self.layout.storage_path(self.resolve_storage(mode))

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise StateError(f"unknown host {name!r}: this lab has {', '.join(h.name for h in self.hosts)}")

    def other(self, host: Host) -> Host:
        return next(h for h in self.hosts if h.name != host.name)

    @property
    def pairs(self) -> list[tuple[Host, Host]]:
        """The host pairs of lab.yaml that this lab has (a pair view has just its own)."""
        mine = {h.name: h for h in self.hosts}
        return [(mine[a], mine[b]) for a, b in self.config.pairs if a in mine and b in mine]

    def pair_view(self, src: Host, dst: Host) -> "Lab":
        """The lab as a test on one host pair sees it: hosts are (source, destination)."""
        return dataclasses.replace(self, hosts=(src, dst))

    @classmethod
    def from_state(cls, config: LabConfig, state: LabState) -> "Lab":
        layout = state.layout
        hosts = tuple(
            Host(name=h.name, address=h.address, ssh_user=h.ssh_user, ssh_key=Path(h.ssh_key or layout.key),
                 libvirt_uri=(f"qemu+ssh://{h.ssh_user}@{h.address}/system?keyfile={h.ssh_key or layout.key}"
                              f"&command={layout.ssh_wrapper}"),
                 ssh_config=layout.ssh_config, host_uuid=h.host_uuid, stack=h.stack.name,
                 backports=tuple(h.stack.backports))
            for h in state.hosts
        )
        mode = state.storage or config.storage
        storage = Storage(mode=mode, path=layout.storage_path(mode), shared=mode != "local")
        return cls(config, state, hosts, config.network.runner_address, storage, layout.dir)

    @classmethod
    def load(cls, config: LabConfig) -> "Lab":
        state = LabState.load(config.name)
        if state is None or not state.ready:
            raise StateError(f"lab {config.name!r} is not up: run `python -m lab up`")
        return cls.from_state(config, state)

    def stack_of(self, host: Host) -> dict:
        """The stack the lab gave `host`: name, source, exact package versions, where it came from."""
        stack = self.state.host(host.name).stack
        return {"name": stack.name, "source": stack.source, "qemu": stack.qemu, "libvirt": stack.libvirt,
                "origin": stack.origin, "backports": list(stack.backports)}

    def describe(self, healthy: bool = True, versions: bool = True) -> dict:
        hosts = []
        for h in self.hosts:
            entry = {"name": h.name, "address": h.address, "libvirt_uri": h.libvirt_uri,
                     "ssh": h.ssh_target, "host_uuid": h.host_uuid}
            if versions and healthy:
                entry.update(host_versions(h))
            entry["stack"] = self.stack_of(h)  # the whole record (host_versions names it only)
            hosts.append(entry)
        return {"backend": self.state.backend, "name": self.state.name, "up": healthy,
                "accelerator": self.state.accelerator, "accelerator_reason": self.state.accelerator_reason,
                "storage": {"mode": self.storage.mode, "path": str(self.storage.path), "shared": self.storage.shared,
                            "nfs_server": self.nfs_address},
                "runner_address": self.runner_address, "hosts": hosts,
                "pairs": [[a.name, b.name] for a, b in self.pairs]}


QEMU_CHANGELOG = "/usr/share/doc/qemu-system-x86/changelog.Debian.gz"


def host_versions(host: Host) -> dict:
    """The host's stack, and libvirt, QEMU (with its build, e.g. "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1")
    and kernel versions as the host reports them."""
    try:
        conn = host.connect()
        lib, qemu = conn.getLibVersion(), conn.getVersion()
        # The distro's changelog names the upstream commits its package backports (Debian: "upstream commit <id>").
        lines = host.run("uname -r; qemu-system-x86_64 --version | head -n 1; "
                         f"zcat -f {QEMU_CHANGELOG} 2>/dev/null | grep -oE '\\b[0-9a-f]{{12,40}}\\b' | sort -u | "
                         "tr '\\n' ' '; echo", timeout=25).stdout.splitlines()
        hostname = conn.getHostname()
    except (libvirt.libvirtError, LabError) as exc:  # status must still print
        return {"stack": host.stack, "error": str(exc)}
    fmt = lambda v: f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"  # noqa: E731
    build = re.search(r"\(([^)]*)\)", lines[1]) if len(lines) > 1 else None
    return {"stack": host.stack, "hostname": hostname, "libvirt_version": fmt(lib), "qemu_version": fmt(qemu),
            "qemu_build": build[1] if build else "", "backports": list(host.backports),
            "changelog_commits": lines[2].split() if len(lines) > 2 else [],
            "kernel": lines[0].strip() if lines else ""}

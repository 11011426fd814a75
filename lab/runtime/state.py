"""The lab's state file: everything a lab made, so `down` can undo it after a crash.

Written after every step of `up`, so a runner killed half-way still leaves a
record of what exists. Typed: each backend's own record is a section of its
own, and a file with an unknown key is refused with the key's name.
"""
from __future__ import annotations

import hashlib
import json
import os

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lab.errors import StateError
from lab.runtime.layout import LabLayout
from lab.util.files import atomic_write_text


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StackRecord(_Record):
    """The QEMU + libvirt a host runs (lab.stacks resolved it): name, where from, exact versions, the trees."""
    name: str = "system"
    source: str = "system"  # system | archive | build | path | git
    qemu: str = ""  # exact version: the package version, or what the tree reports
    libvirt: str = ""
    qemu_upstream: str = ""  # what libvirt must report for it (10.0.2); empty: not checked
    libvirt_upstream: str = ""
    layers: list[str] = Field(default_factory=list)  # trees overlaid on /usr, topmost first; none for system
    binds: dict[str, str] = Field(default_factory=dict)  # tree dir -> /usr dir it replaces whole (module dirs)
    origin: str = ""  # e.g. "bookworm-backports at http://deb.debian.org/debian"
    # Upstream commits its patches backport (a build stack's patch headers): a known defect they fix
    # is not excused on this stack although its version is in the defect's range.
    backports: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        """Names what runs (for per-stack caches): `system`, or a digest of the trees."""
        if not self.layers:
            return "system"
        return hashlib.sha256(json.dumps([self.layers, self.binds], sort_keys=True).encode()).hexdigest()[:16]


class HostState(_Record):
    name: str
    address: str
    netns: str = ""  # embedded: the host's network namespace
    veth: str = ""  # embedded: the root-namespace end of its veth
    host_uuid: str = ""
    holder_pid: int = 0  # embedded: keeps the host's mount+uts namespaces alive
    pids: dict[str, int] = Field(default_factory=dict)  # daemon name -> PID
    ssh_user: str = "root"
    ssh_key: str = ""  # empty: the lab's own key
    stack: StackRecord = Field(default_factory=StackRecord)


class ImageRecord(_Record):
    """The guest kernel and initrd as the hosts see them."""
    kernel: str
    initrd: str
    key: str


class VagrantRecord(_Record):
    daemons: dict[str, int] = Field(default_factory=dict)  # root-namespace daemons the lab started
    work_dir: str = ""
    prefix: str = ""
    networks: list[str] = Field(default_factory=list)
    vms: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    driver: str = ""
    driver_reason: str = ""
    provision_recap: list[str] = Field(default_factory=list)
    inner: dict[str, dict] = Field(default_factory=dict)  # accelerator -> what a guest cycle measured inside the VMs
    fill_check: dict = Field(default_factory=dict)  # this boot's fill speed (the suites' size), which state.fill_mibs is
    resumed_from: str = ""  # the provisioned-VM cache this `up` started from; empty: made and provisioned afresh


class LabState(_Record):
    name: str
    backend: str
    config_digest: str
    bridge: str = ""
    hosts: list[HostState] = Field(default_factory=list)
    accelerator: str = ""
    accelerator_reason: str = ""
    storage: str = ""
    owner_run: str = ""  # the pytest run that brought it up, if any
    ready: bool = False
    image: ImageRecord | None = None
    fill_mibs: float = 0.0  # how fast a lab guest fills memory, where measured (Vagrant); sets agent timeouts
    nfs: HostState | None = None  # embedded: the NFS server host (storage: nfs)
    vagrant: VagrantRecord | None = None

    @property
    def layout(self) -> LabLayout:
        return LabLayout(self.name)

    def save(self) -> None:
        atomic_write_text(self.layout.state_file, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, name: str) -> "LabState | None":
        path = LabLayout(name).state_file
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            detail = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc), "loc": ()}
            where = ".".join(str(p) for p in detail["loc"]) or "file"
            raise StateError(f"{path}: unreadable lab state ({where}: {detail['msg']}); "
                             "`python -m lab down` clears the lab by its names") from None

    @classmethod
    def load_or_clear(cls, name: str, progress) -> "LabState | None":
        """For `up` and `down`: an unreadable state file (a lab from another version, a disk that filled)
        does not block them; it is reported and the lab is cleared by its names instead."""
        try:
            return cls.load(name)
        except StateError as exc:
            progress(f"{exc}: clearing the lab by its names")
            return None

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        raise StateError(f"host {name!r} is not in lab {self.name!r} (hosts: {', '.join(h.name for h in self.hosts)})")


def live_users(name: str, excluding: str = "") -> list[str]:
    """pytest runs holding a lease on lab `name` whose controller process is still alive."""
    users = []
    for lease in LabLayout(name).leases.glob("*"):
        if lease.name == excluding:
            continue
        try:
            os.kill(int(lease.read_text()), 0)
            users.append(lease.name)
        except (ValueError, ProcessLookupError, OSError):
            lease.unlink(missing_ok=True)  # that run is gone
    return users

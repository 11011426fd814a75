"""The lab's state file: everything a lab made, so `down` can undo it after a crash.

Kept outside the checkout (a CI run starts from a fresh clone on the same machine)
and written after every step of `up`, so a runner killed half-way still leaves
a record of what exists.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.errors import StateError

STATE_ROOT = Path(os.environ.get("LAB_STATE_ROOT", "/var/lib/kvm-acceptance-lab"))


def lab_dir(name: str) -> Path:
    return STATE_ROOT / name


@dataclass
class HostState:
    name: str
    address: str
    netns: str
    veth: str
    host_uuid: str
    holder_pid: int = 0  # keeps the host's mount+uts namespaces alive
    pids: dict[str, int] = field(default_factory=dict)  # daemon name -> PID
    ssh_user: str = "root"
    ssh_key: str = ""  # empty: the lab's own key


@dataclass
class LabState:
    name: str
    backend: str
    config_digest: str
    bridge: str = ""
    hosts: list[HostState] = field(default_factory=list)
    accelerator: str = ""
    accelerator_reason: str = ""
    storage: str = ""
    owner_run: str = ""  # the pytest run that brought it up, if any
    ready: bool = False
    extra: dict = field(default_factory=dict)  # backend-specific records

    @property
    def path(self) -> Path:
        return lab_dir(self.name) / "state.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, name: str) -> "LabState | None":
        path = lab_dir(name) / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: unreadable lab state ({exc}); remove it after `python -m lab down`") from None
        hosts = [HostState(**h) for h in data.pop("hosts", [])]
        return cls(hosts=hosts, **data)

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        raise StateError(f"host {name!r} is not in lab {self.name!r} (hosts: {', '.join(h.name for h in self.hosts)})")


def live_users(name: str, excluding: str = "") -> list[str]:
    """pytest runs holding a lease on lab `name` whose controller process is still alive."""
    users = []
    for lease in (lab_dir(name) / "users").glob("*"):
        if lease.name == excluding:
            continue
        try:
            os.kill(int(lease.read_text()), 0)
            users.append(lease.name)
        except (ValueError, ProcessLookupError, OSError):
            lease.unlink(missing_ok=True)  # that run is gone
    return users

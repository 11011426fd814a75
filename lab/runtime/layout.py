"""The lab directory's layout: every file name a lab keeps, written down once.

Backends write these files and the runtime reads them back; both ask this
class for the path, so a name is never re-derived in a second place. Kept
outside the checkout (a CI run starts from a fresh clone on the same machine).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_ROOT = Path(os.environ.get("LAB_STATE_ROOT", "/var/lib/kvm-acceptance-lab"))
CACHE_ROOT = Path("/var/cache/kvm-acceptance-lab")
# Where the static and Vagrant backends put the guest image on remote hosts.
REMOTE_IMAGE_DIR = "/var/lib/kvm-acceptance-lab/images"
# libvirt's default QEMU migration port range: firewalls and the preflight check name it.
MIGRATION_PORTS = (49152, 49215)


@dataclass(frozen=True)
class LabLayout:
    name: str
    root: Path = STATE_ROOT

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def lock_file(self) -> Path:
        """Held while the lab comes up or goes down (one lab, many xdist workers)."""
        return self.root / f".{self.name}.lock"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def public_key(self) -> Path:
        return self.dir / "id_ed25519.pub"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def ssh_wrapper(self) -> Path:
        """The `command` of libvirt's ssh transport: ssh with the lab's client config."""
        return self.dir / "ssh"

    def storage_path(self, mode: str) -> Path:
        """Where guests' disks live for a storage mode (the same path on every host)."""
        return self.dir / {"local": "local", "nfs": "nfs-export"}.get(mode, "shared")

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    @property
    def leases(self) -> Path:
        """One file per pytest run using the lab (its controller's PID)."""
        return self.dir / "users"

    @property
    def pairs(self) -> Path:
        return self.dir / "pairs"

    @property
    def guest_addresses(self) -> Path:
        return self.dir / "guest-addresses.json"

    @property
    def vagrant_work(self) -> Path:
        return self.dir / "vagrant"

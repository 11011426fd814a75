"""What the Vagrant lab makes in the runner's libvirt besides the VMs: its storage pool; and the
sweep in `down` for whatever of the lab is left there (domains, networks, pool, volumes)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from lab.backends.base import Progress
from lab.errors import BackendError
from lab.runtime.state import LabState
from lab.util.process import run

POOL_ROOT = Path("/var/lib/libvirt/images")


class Virsh:
    """virsh against the runner's libvirt URI, with virsh's own words on failure."""

    def __init__(self, uri: str):
        self.uri = uri

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(["virsh", "-q", "-c", self.uri, *args], check=check, timeout=timeout, error=BackendError,
                   what=f"virsh {' '.join(args)}")


def ensure_pool(virsh: Virsh, name: str, progress: Progress) -> None:
    """A storage pool of the lab's own (box volume and VM disks), so `down` can remove all of it."""
    if virsh("pool-info", name, check=False).returncode == 0:
        virsh("pool-start", name, check=False)
        return
    path = POOL_ROOT / name
    progress(f"storage pool {name} at {path}")
    virsh("pool-define-as", name, "dir", "--target", str(path))
    virsh("pool-build", name)
    virsh("pool-start", name)


def remove_pool(virsh: Virsh, name: str, progress: Progress) -> None:
    if virsh("pool-info", name, check=False).returncode != 0:
        return
    virsh("pool-start", name, check=False)
    virsh("pool-refresh", name, check=False)
    for vol in virsh("vol-list", name, check=False).stdout.splitlines():
        vol = vol.split()[0] if vol.split() else ""
        if vol:
            virsh("vol-delete", "--pool", name, vol, check=False)
    for step in ("pool-destroy", "pool-delete", "pool-undefine"):
        virsh(step, name, check=False)
    progress(f"storage pool {name} and its volumes removed")


def remove_leftovers(virsh: Virsh, lab_name: str, state: LabState, progress: Progress) -> None:
    record = state.vagrant
    prefix = (record.prefix if record else "") or f"{lab_name}-"
    for dom in virsh("list", "--all", "--name", check=False).stdout.split():
        if dom.startswith(prefix):
            progress(f"removing leftover domain {dom}")
            virsh("destroy", dom, check=False)
            virsh("undefine", dom, "--remove-all-storage", "--nvram", check=False)
    for net in (record.networks if record else []) or [f"{lab_name}-mgmt", f"{lab_name}-mig"]:
        if virsh("net-info", net, check=False).returncode == 0:
            progress(f"removing network {net}")
            virsh("net-destroy", net, check=False)
            virsh("net-undefine", net, check=False)
    remove_pool(virsh, lab_name, progress)

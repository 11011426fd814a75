"""The lab's SSH client side, the same for every backend: its key, client config and libvirt's ssh wrapper."""
from __future__ import annotations

from pathlib import Path

from lab.errors import BackendError
from lab.runtime.layout import LabLayout
from lab.util.process import run


def make_key(layout: LabLayout, comment: str) -> None:
    """The lab's own ed25519 key pair (kept across `up`s of the same lab directory)."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    if not layout.key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", layout.key], error=BackendError)
    layout.key.chmod(0o600)


def write_ssh_client_config(path: Path, key: Path | None, known_hosts: Path, *, accept_new: bool = False,
                            multiplex_dir: Path | None = None) -> None:
    """Client config for the runner and for p2p between hosts: lab key, lab known_hosts, strict checking.

    key None: per-host keys come from the inventory (-i on the command line). accept_new: host
    keys are learnt on first contact (static hosts). multiplex_dir: one connection per host kept
    open (an SSH login into a TCG VM costs seconds).
    """
    text = "Host *\n  User root\n"
    if key is not None:
        text += f"  IdentityFile {key}\n"
    text += (
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n"
        f"  StrictHostKeyChecking {'accept-new' if accept_new else 'yes'}\n"
        "  BatchMode yes\n"
        "  LogLevel ERROR\n"
        "  ConnectTimeout 10\n"  # 5 s was seen to run out on a loaded runner (SYNs retried while VMs boot)
    )
    if multiplex_dir is not None:
        text += f"  ControlMaster auto\n  ControlPath {multiplex_dir}/cm-%C\n  ControlPersist 120s\n"
    path.write_text(text)


def write_ssh_wrapper(path: Path, config: Path) -> None:
    """libvirt's ssh transport takes a `command`: this one makes it use the lab's client config."""
    path.write_text(f'#!/bin/sh\nexec ssh -F {config} "$@"\n')
    path.chmod(0o755)

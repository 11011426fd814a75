"""What the Vagrant lab's tests share: the shipped lab files, the address rules, a lab.yaml with
changes, and running `lab` and virsh the way a user would."""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lab.config.lab import parse_lab_config

REPO = Path(__file__).resolve().parent.parent
TCG_YAML = REPO / "labs" / "vagrant-tcg.yaml"
EXAMPLE_YAML = REPO / "labs" / "vagrant-example.yaml"
STACKS_YAML = REPO / "labs" / "vagrant-stacks.yaml"
FORBIDDEN = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")


def vagrant_doc(path: Path, **changes) -> dict:
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key.startswith("vagrant."):
            data["vagrant"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return data


def vagrant_config(path: Path = TCG_YAML, **changes):
    return parse_lab_config(vagrant_doc(path, **changes), str(path))


def vagrant_with_libvirt() -> str | None:
    """None when `vagrant validate` can run here, else why not."""
    if not shutil.which("vagrant"):
        return "vagrant is not installed (apt-get install vagrant vagrant-libvirt)"
    from lab.backends.vagrant.driver import vagrant_env

    out = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, env=vagrant_env()).stdout
    if "vagrant-libvirt" not in out:
        return "the vagrant-libvirt plugin is not installed (apt-get install vagrant-libvirt)"
    return None


def run_lab(*args: str, config: Path, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lab", "--lab-config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True, text=True).stdout

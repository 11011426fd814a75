"""lab.yaml -> the Vagrant work dir: settings.json, a stub Vagrantfile, the playbook's variables.

The repo's lab/backends/vagrant/Vagrantfile holds all the logic and no lab-specific value;
the work dir gets a two-line Vagrantfile that points it at settings.json and
loads it. Nothing here is meant to be edited by hand: `python -m lab up` rewrites it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from lab.config.vagrant import THIRD_VM, VagrantSpec, nfs_server_address
from lab.runtime.layout import MIGRATION_PORTS
from lab.util.files import atomic_write_json

HERE = Path(__file__).resolve().parent
REPO_VAGRANTFILE = HERE / "Vagrantfile"
PROVISION = HERE.parents[2] / "provision"  # the playbook; real hosts use the same one
PLAYBOOK = PROVISION / "site.yml"
ANSIBLE_CFG = PROVISION / "ansible.cfg"

BRIDGE = "br0"
NFS_EXPORT_ROOT = "/srv/kvm-acceptance-lab"


@dataclass(frozen=True)
class Machine:
    name: str
    address: str
    cpus: int
    memory: int
    role: str  # hypervisor | nfs


def vm_mac(address: str) -> str:
    """The migration NIC's MAC, from its address (the playbook finds the NIC by it, whatever the box names it)."""
    b = ipaddress.IPv4Address(address).packed
    return "52:54:02:{:02x}:{:02x}:{:02x}".format(b[1], b[2], b[3])


def machines(config, spec: VagrantSpec) -> list[Machine]:
    out = [Machine(h.name, h.address, spec.cpus, spec.memory_mib, "hypervisor") for h in config.hosts]
    if config.storage != "local" and spec.nfs_server == THIRD_VM:
        out.append(Machine(spec.nfs_vm_name, config.network.nfs_address, spec.nfs_cpus, spec.nfs_memory_mib, "nfs"))
    return out


def shared_mount(config, lab_dir: Path) -> str:
    """Where the hypervisors mount the NFS export: the path the harness puts shared disks in (lab/runtime/layout.py)."""
    if config.storage == "local":
        return ""
    return str(lab_dir / ("nfs-export" if config.storage == "nfs" else "shared"))


def playbook_vars(config, spec: VagrantSpec, lab_dir: Path, public_key: str) -> dict:
    """Variables for provision/site.yml; the same names serve real hosts (see provision/README.md)."""
    net = ipaddress.IPv4Network(config.network.subnet)
    nfs = nfs_server_address(config, spec)
    hosts = [{"name": m.name, "address": m.address} for m in machines(config, spec)]
    return {
        "lab_name": config.name,
        "lab_dir": str(lab_dir),
        "lab_storage": config.storage,
        "lab_migration_cidr": str(net),
        "lab_prefixlen": net.prefixlen,
        "lab_mtu": config.network.mtu,
        "lab_bridge": BRIDGE,
        "lab_hosts": hosts,
        "lab_public_key": public_key,
        "lab_time_server": config.network.runner_address,  # the runner's lab chronyd (libvirt's downtime spans two clocks)
        "lab_private_key_src": str(lab_dir / "id_ed25519"),
        "lab_runner_known_hosts": str(lab_dir / "known_hosts"),
        "lab_nfs_server": nfs or "",
        "lab_nfs_export": f"{NFS_EXPORT_ROOT}/{config.name}" if nfs else "",
        "lab_shared_mount": shared_mount(config, lab_dir) if nfs else "",
        "libvirt_migration_port_min": MIGRATION_PORTS[0],
        "libvirt_migration_port_max": MIGRATION_PORTS[1],
    }


def settings_document(config, spec: VagrantSpec, *, driver: str, lab_dir: Path, work_dir: Path,
                      public_key: str, box_url: str | None = None, stacks: dict[str, dict] | None = None) -> dict:
    """settings.json: everything the repo Vagrantfile reads."""
    net = ipaddress.IPv4Network(config.network.subnet)
    ms = machines(config, spec)
    nfs_names = [m.name for m in ms if m.role == "nfs"] or ([spec.nfs_server] if nfs_server_address(config, spec) else [])
    # The boxes are Debian: no interpreter discovery (a round of commands per VM, seconds each under TCG).
    host_vars = {m.name: {"lab_address": m.address, "lab_nic_mac": vm_mac(m.address),
                          "lab_make_bridge": m.role == "hypervisor", "ansible_python_interpreter": "/usr/bin/python3"}
                 for m in ms}
    return {
        "lab": config.name,
        "prefix": f"{config.name}-",
        "box": spec.box,
        "box_url": box_url or spec.box_url,
        "libvirt_uri": spec.libvirt_uri,
        "driver": driver,
        "cpu_model": "qemu64",
        # TCG emulates AMD's nested paging, but qemu64 does not show it: without it KVM inside the VMs
        # shadows the guests' page tables and every first touch of a page is an emulated VM exit (a
        # 32 MiB fill ran at 0.4-1.3 MiB/s). Optional: a QEMU that lacks it leaves it out.
        "cpu_features": ["npt"],
        # Under TCG a VM takes about a minute to boot; give Vagrant room.
        "boot_timeout": 300 if driver == "qemu" else 120,
        "storage_pool": config.name,
        "management": {"name": f"{config.name}-mgmt", "address": spec.management_network,
                       "mode": spec.management_network_mode},
        "migration": {"name": f"{config.name}-mig", "netmask": str(net.netmask),
                      "host_ip": config.network.runner_address, "mtu": config.network.mtu},
        "machines": [{"name": m.name, "address": m.address, "cpus": m.cpus, "memory": m.memory, "role": m.role,
                      "mac": vm_mac(m.address), "serial_log": str(work_dir / f"{m.name}.serial")} for m in ms],
        "provision": {
            "enabled": spec.provision,
            "playbook": str(PLAYBOOK),
            "config_file": str(ANSIBLE_CFG),
            "groups": {"hypervisors": [h.name for h in config.hosts], "nfs_servers": nfs_names},
            "host_vars": host_vars,
            # Structured values go in extra_vars (JSON on the command line): Vagrant writes host_vars into an
            # INI inventory as key=value text, where a dict arrives as a string (seen: 'str object' has no
            # attribute 'name'). Role stack reads lab_stacks[inventory_hostname].
            "extra_vars": {**playbook_vars(config, spec, lab_dir, public_key), "lab_stacks": stacks or {}},
            "verbose": spec.ansible_verbose,
            "raw_arguments": ["--diff"] if spec.ansible_verbose else [],
        },
    }


def write_work_dir(work_dir: Path, document: dict) -> Path:
    """settings.json and the stub Vagrantfile; returns the settings path."""
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = work_dir / "settings.json"
    atomic_write_json(settings, document)
    (work_dir / "Vagrantfile").write_text(
        "# Generated by `python -m lab up` from lab.yaml; do not edit (the logic is in the repo's Vagrantfile).\n"
        "$lab_settings = File.join(__dir__, 'settings.json')\n"
        f"load '{REPO_VAGRANTFILE}'\n")
    return settings

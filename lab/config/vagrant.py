"""The `vagrant:` mapping of lab.yaml, validated; errors are one line naming the field.

The two hypervisor VMs are lab.yaml's `hosts` (their names; `address` is each VM's
address on the migration network). The migration network is lab.yaml's
`network.subnet` (one source of truth); the runner is the libvirt network's
bridge address there (`network.runner_address`). This mapping adds what only a
Vagrant lab has: the box, VM sizes, the libvirt driver, the management network
and where the NFS server runs.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from lab.errors import ConfigError

DRIVERS = ("auto", "kvm", "qemu")
MANAGEMENT_MODES = ("nat", "none")
DEFAULT_BOX = "debian/bookworm64"  # public libvirt box (Vagrant Cloud); `python -m lab.backends.vagrant.box build` makes a local one
THIRD_VM = "third-vm"
NO_NFS = "none"
KEYS = ("box", "box_url", "cpus", "memory_mib", "driver", "management_network", "management_network_mode",
        "nfs_server", "nfs_vm_name", "nfs_cpus", "nfs_memory_mib", "vagrant_dir", "libvirt_uri", "provision",
        "ansible_verbose")


@dataclass(frozen=True)
class VagrantSpec:
    box: str = DEFAULT_BOX
    box_url: str | None = None  # a .box path or URL Vagrant adds the box from when it is missing
    cpus: int = 2
    memory_mib: int = 2048
    driver: str = "auto"  # auto: kvm with host-passthrough + nested where KVM works on the runner, else qemu (TCG)
    management_network: str = "198.19.200.0/24"  # vagrant-libvirt's NAT network (its default 192.168.121/24 is refused)
    management_network_mode: str = "nat"  # nat: VMs reach the distro mirror; none: isolated (box has every package)
    nfs_server: str = THIRD_VM  # third-vm | the name of one of the hosts | none (storage: local only)
    nfs_vm_name: str = "nfs"
    nfs_cpus: int = 1
    nfs_memory_mib: int = 512
    vagrant_dir: str | None = None  # generated work dir (settings.json, .vagrant/); default <lab dir>/vagrant
    libvirt_uri: str = "qemu:///system"
    provision: bool = True  # run provision/site.yml through Vagrant's ansible provisioner
    ansible_verbose: bool = False


def _int(data: dict, key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"vagrant.{key}: {value!r} is not a whole number")
    if not low <= value <= high:
        raise ConfigError(f"vagrant.{key}: {value} is out of range ({low} to {high})")
    return value


def _str(data: dict, key: str, default: str | None) -> str | None:
    value = data.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"vagrant.{key}: {value!r} is not a non-empty string")
    return value


def _bool(data: dict, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"vagrant.{key}: {value!r} is not true or false")
    return value


def _choice(data: dict, key: str, choices: tuple[str, ...], default: str) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise ConfigError(f"vagrant.{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _lab_network(data: dict, key: str, default: str) -> str:
    from lab.config.lab import FORBIDDEN_NETS, LAB_RANGE

    raw = data.get(key, default)
    try:
        net = ipaddress.IPv4Network(str(raw))
    except ValueError:
        raise ConfigError(f"vagrant.{key}: {raw!r} is not an IPv4 network like 198.19.200.0/24") from None
    for bad in FORBIDDEN_NETS:
        if net.overlaps(bad):
            raise ConfigError(f"vagrant.{key}: {net} overlaps private range {bad}; use addresses inside {LAB_RANGE}")
    if not net.subnet_of(LAB_RANGE):
        raise ConfigError(f"vagrant.{key}: {net} is outside {LAB_RANGE}; lab networks stay inside it")
    if net.prefixlen > 29:
        raise ConfigError(f"vagrant.{key}: {net} is too small (at most /29)")
    return str(net)


def parse_vagrant_settings(data: Any) -> VagrantSpec:
    """Validate lab.yaml's `vagrant:` mapping (lab/config.py calls this)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"vagrant: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"vagrant.{key}: unknown key (allowed: {', '.join(KEYS)})")
    d = VagrantSpec()
    box = _str(data, "box", d.box)
    if any(c.isspace() or c in "'\"\\" for c in box):
        raise ConfigError(f"vagrant.box: {box!r} is not a box name (like debian/bookworm64)")
    box_url = _str(data, "box_url", d.box_url)
    vagrant_dir = _str(data, "vagrant_dir", d.vagrant_dir)
    if vagrant_dir is not None and not vagrant_dir.startswith("/"):
        raise ConfigError(f"vagrant.vagrant_dir: {vagrant_dir!r} is not an absolute path")
    nfs_vm_name = _str(data, "nfs_vm_name", d.nfs_vm_name)
    from lab.config.lab import HOST_NAME

    if not HOST_NAME.match(nfs_vm_name):
        raise ConfigError(f"vagrant.nfs_vm_name: {nfs_vm_name!r} is not a host name (lowercase letter, then "
                          "letters, digits, '-'; at most 15)")
    nfs_server = _str(data, "nfs_server", d.nfs_server)
    if nfs_server not in (THIRD_VM, NO_NFS) and not HOST_NAME.match(nfs_server):
        raise ConfigError(f"vagrant.nfs_server: {nfs_server!r} is not {THIRD_VM}, {NO_NFS} or a host name")
    uri = _str(data, "libvirt_uri", d.libvirt_uri)
    if not uri.startswith("qemu"):
        raise ConfigError(f"vagrant.libvirt_uri: {uri!r} is not a QEMU libvirt URI like qemu:///system")
    return VagrantSpec(
        box=box,
        box_url=box_url,
        cpus=_int(data, "cpus", d.cpus, 1, 64),
        memory_mib=_int(data, "memory_mib", d.memory_mib, 512, 1 << 20),
        driver=_choice(data, "driver", DRIVERS, d.driver),
        management_network=_lab_network(data, "management_network", d.management_network),
        management_network_mode=_choice(data, "management_network_mode", MANAGEMENT_MODES, d.management_network_mode),
        nfs_server=nfs_server,
        nfs_vm_name=nfs_vm_name,
        nfs_cpus=_int(data, "nfs_cpus", d.nfs_cpus, 1, 64),
        nfs_memory_mib=_int(data, "nfs_memory_mib", d.nfs_memory_mib, 256, 1 << 20),
        vagrant_dir=vagrant_dir,
        libvirt_uri=uri,
        provision=_bool(data, "provision", d.provision),
        ansible_verbose=_bool(data, "ansible_verbose", d.ansible_verbose),
    )


def check_lab(config) -> VagrantSpec:
    """Cross-checks between `vagrant:` and the rest of lab.yaml; returns the spec (defaults if absent)."""
    spec = config.vagrant or VagrantSpec()
    migration = ipaddress.IPv4Network(config.network.subnet)
    management = ipaddress.IPv4Network(spec.management_network)
    if management.overlaps(migration):
        raise ConfigError(f"vagrant.management_network: {management} overlaps the migration network "
                          f"(network.subnet {migration}); they must be separate")
    guests = ipaddress.IPv4Network(config.network.guest_range)
    runner = ipaddress.IPv4Address(config.network.runner_address)
    names = [h.name for h in config.hosts]
    for i, h in enumerate(config.hosts):
        address = ipaddress.IPv4Address(h.address)
        if address not in migration:
            raise ConfigError(f"hosts[{i}].address: {address} is not inside network.subnet {migration} "
                              "(the Vagrant VMs' migration network)")
        if address in guests or address == runner:
            raise ConfigError(f"hosts[{i}].address: {address} collides with the runner address or guest_range")
        if h.ssh_user != "root":
            raise ConfigError(f"hosts[{i}].ssh_user: the vagrant lab logs in as root (got {h.ssh_user!r})")
    if spec.nfs_server == NO_NFS and config.storage != "local":
        raise ConfigError(f"vagrant.nfs_server: none, but storage: {config.storage} needs an NFS server "
                          f"({THIRD_VM} or one of {', '.join(names)})")
    if spec.nfs_server not in (THIRD_VM, NO_NFS) and spec.nfs_server not in names:
        raise ConfigError(f"vagrant.nfs_server: {spec.nfs_server!r} is not {THIRD_VM}, {NO_NFS} or one of the hosts "
                          f"({', '.join(names)})")
    if spec.nfs_server == THIRD_VM and config.storage != "local":
        if spec.nfs_vm_name in names:
            raise ConfigError(f"vagrant.nfs_vm_name: {spec.nfs_vm_name!r} is already a hypervisor's name")
        nfs = ipaddress.IPv4Address(config.network.nfs_address)
        if nfs in (ipaddress.IPv4Address(h.address) for h in config.hosts):
            raise ConfigError(f"network.nfs_address: {nfs} is a hypervisor's address; the third VM needs its own")
    return spec


def nfs_server_address(config, spec: VagrantSpec) -> str | None:
    """The NFS server's address on the migration network, or None when there is none."""
    if config.storage == "local" or spec.nfs_server == NO_NFS:
        return None
    if spec.nfs_server == THIRD_VM:
        return config.network.nfs_address
    return config.host(spec.nfs_server).address

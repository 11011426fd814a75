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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictBool, StrictInt

from lab.config.common import HOST_NAME, AbsPath, HostName, LabNetwork, NonEmpty, rule
from lab.config.validation import Model, validated
from lab.errors import ConfigError

DEFAULT_BOX = "debian/bookworm64"  # public libvirt box (Vagrant Cloud); `python -m lab.backends.vagrant.box build` makes a local one
THIRD_VM = "third-vm"
NO_NFS = "none"

Box = Annotated[NonEmpty, rule(lambda v: not any(c.isspace() or c in "'\"\\" for c in v),
                               "is not a box name (like debian/bookworm64)")]


def _roomy(net: str) -> str:
    # Room for the runner, the VMs and libvirt's DHCP range.
    if ipaddress.IPv4Network(net).prefixlen > 29:
        raise ValueError(f"{net} is too small (at most /29)")
    return net


ManagementNetwork = Annotated[LabNetwork, AfterValidator(_roomy)]
NfsServer = Annotated[NonEmpty, rule(lambda v: v in (THIRD_VM, NO_NFS) or HOST_NAME.fullmatch(v),
                                     f"is not {THIRD_VM}, {NO_NFS} or a host name")]
LibvirtUri = Annotated[NonEmpty, rule(lambda v: v.startswith("qemu"),
                                      "is not a QEMU libvirt URI like qemu:///system")]


class VagrantSpec(Model):
    """lab.yaml `vagrant:`: what only a Vagrant lab has (the hosts and networks are lab.yaml's own)."""

    box: Box = DEFAULT_BOX
    box_url: NonEmpty | None = None  # a .box path or URL Vagrant adds the box from when it is missing
    cpus: StrictInt = Field(2, ge=1, le=64)
    memory_mib: StrictInt = Field(2048, ge=512, le=1 << 20)
    # auto: kvm with host-passthrough + nested where KVM works on the runner, else qemu (TCG)
    driver: Literal["auto", "kvm", "qemu"] = "auto"
    # vagrant-libvirt's NAT network (its default 192.168.121/24 is a private range, refused)
    management_network: ManagementNetwork = "198.19.200.0/24"
    # nat: VMs reach the distro mirror; none: isolated (the box has every package)
    management_network_mode: Literal["nat", "none"] = "nat"
    nfs_server: NfsServer = THIRD_VM  # third-vm | the name of one of the hosts | none (storage: local only)
    nfs_vm_name: HostName = "nfs"
    nfs_cpus: StrictInt = Field(1, ge=1, le=64)
    nfs_memory_mib: StrictInt = Field(512, ge=256, le=1 << 20)
    vagrant_dir: AbsPath | None = None  # generated work dir (settings.json, .vagrant/); default <lab dir>/vagrant
    libvirt_uri: LibvirtUri = "qemu:///system"
    provision: StrictBool = True  # run provision/site.yml through Vagrant's ansible provisioner
    # keep the provisioned VMs in /var/cache/kvm-acceptance-lab/vagrant/provisioned/<lab> after the first
    # `up`; the next `up` of the same lab.yaml (box, playbook) starts from them instead of provisioning
    keep_provisioned: StrictBool = True
    ansible_verbose: StrictBool = False


def parse_vagrant_settings(data: Any) -> VagrantSpec:
    """Validate lab.yaml's `vagrant:` mapping on its own (lab.yaml's model validates it in place)."""
    return validated(VagrantSpec, {} if data is None else data, root="vagrant", where=("vagrant",))


def check_lab(config) -> VagrantSpec:
    """Cross-checks between `vagrant:` and the rest of a LabConfig; returns the spec (defaults if absent).

    Run by the Vagrant backend, not on load: lab.yaml is valid for every backend, and
    `--lab vagrant` may pick this one after loading.
    """
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

"""lab.yaml: the lab's shape (backend, network, hosts, pairs, guest sizes), validated on load.

Every problem is reported as one line that names the field and what is allowed, e.g.
``hosts[1].address: '300.1.1.1' is not an IPv4 address``. Fields are declared in the
order they are checked: the host rules need the backend and network, the pairs the hosts.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, StrictInt, ValidationInfo, field_validator, model_validator

from lab.config.common import IPv4, HostName, LabNetwork, Network, rule
from lab.config.hotpatch import HotpatchSpec
from lab.config.stacks import SYSTEM, StackName, StackSpec, check_host_stack, check_stacks
from lab.config.vagrant import VagrantSpec
from lab.config.validation import Document, Model, load_file, problem, validated
from lab.errors import ConfigError

DEFAULT_LAB_CONFIG = Path(__file__).resolve().parents[2] / "lab.yaml"
Backend = Literal["embedded", "vagrant", "static"]
BACKENDS = get_args(Backend)
LAB_NAME = re.compile(r"[a-z][a-z0-9]{0,7}")  # short: it prefixes the bridge's and namespaces' names
LabName = Annotated[str, rule(LAB_NAME.fullmatch,
                              "is not a lab name (lowercase letter, then letters or digits; at most 8)")]


class HostSpec(Model):
    """One hypervisor host: its name, and its address on the lab network."""

    name: HostName
    address: IPv4 = Field(description="an IPv4 address inside network.subnet")
    ssh_user: str = "root"
    ssh_key: str | None = None  # static backend: the key to reach it
    stack: StackName = SYSTEM  # the QEMU + libvirt it runs: `system` or a name under `stacks:`


class GuestSpec(Model):
    """The lab guests' default size and timing."""

    memory_mib: StrictInt = Field(256, ge=64, le=65536)
    vcpus: StrictInt = Field(1, ge=1, le=64)
    disk_mib: StrictInt = Field(32, ge=1, le=1 << 20)
    heartbeat_us: StrictInt = Field(1000, ge=100, le=1000)
    # Start to first heartbeat; raise it for slow labs (nested TCG).
    boot_timeout_s: StrictInt = Field(90, ge=5, le=3600)
    agent_timeout_s: StrictInt = Field(10, ge=1, le=600)  # default wait for an agent command's answer
    # What the guests run as; `lab doctor` without --guest plans with these too. Names as libvirt spells them.
    cpu_model: Annotated[str, rule(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}").fullmatch,
                                   "is not a CPU model name (e.g. qemu64; `virsh cpu-models x86_64`)")] = "qemu64"
    machine: Annotated[str, rule(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}").fullmatch,
                                 "is not a machine type (e.g. pc, q35; `qemu-system-x86_64 -machine help`)")] = "pc"


class NetworkSpec(Model):
    """The lab network: hosts, the runner and guests share it; guests take addresses from guest_range."""

    subnet: LabNetwork = "198.18.0.0/16"
    runner_address: IPv4 = "198.18.0.1"
    guest_range: Network = "198.18.128.0/17"
    mtu: StrictInt = Field(1500, ge=576, le=9000)
    # The NFS server host, with storage: nfs; default: the subnet's first host address + 9 (198.18.0.10).
    nfs_address: IPv4 = Field(None, validate_default=True)

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @field_validator("nfs_address", mode="before")
    @classmethod
    def _nfs_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and "subnet" in info.data:
            return str(next(iter(ipaddress.IPv4Network(info.data["subnet"]).hosts())) + 9)
        return value

    @model_validator(mode="after")
    def _inside_subnet(self) -> NetworkSpec:
        subnet = ipaddress.IPv4Network(self.subnet)
        runner = ipaddress.IPv4Address(self.runner_address)
        guests = ipaddress.IPv4Network(self.guest_range)
        nfs = ipaddress.IPv4Address(self.nfs_address)
        if runner not in subnet:
            raise problem("runner_address", f"{runner} is not inside network.subnet {subnet}")
        if not guests.subnet_of(subnet):
            raise problem("guest_range", f"{guests} is not inside network.subnet {subnet}")
        if runner in guests:
            raise problem("runner_address", f"{runner} lies inside network.guest_range {guests}")
        if nfs not in subnet or nfs in guests or nfs == runner:
            raise problem("nfs_address", f"{nfs} must be inside {subnet}, outside the guest range and not the runner's")
        return self


DEFAULT_HOSTS = (HostSpec(name="hv1", address="198.18.0.11"), HostSpec(name="hv2", address="198.18.0.12"))


class LabConfig(Document):
    """A whole lab.yaml."""

    null_means_default = ("network", "guest", "hotpatch", "hosts", "stacks")
    name: LabName = "kvmlab"
    backend: Backend = "embedded"
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    stacks: dict[StackName, StackSpec] = Field(default_factory=dict)  # name -> where its QEMU and libvirt come from
    hosts: tuple[HostSpec, ...] = DEFAULT_HOSTS
    # Host pairs that xdist workers take from the pool (source, destination); default: consecutive hosts.
    pairs: tuple[tuple[str, str], ...] = Field(None, validate_default=True)
    guest: GuestSpec = Field(default_factory=GuestSpec)
    storage: Literal["shared", "nfs", "local"] = "shared"
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    hotpatch: HotpatchSpec = Field(default_factory=HotpatchSpec)
    vagrant: VagrantSpec | None = None  # the vagrant backend's settings (check_lab cross-checks them)

    def host(self, name: str) -> HostSpec:
        for spec in self.hosts:
            if spec.name == name:
                return spec
        known = ", ".join(h.name for h in self.hosts)
        raise ConfigError(f"unknown host {name!r}: this lab has {known}")

    @field_validator("stacks")
    @classmethod
    def _stacks(cls, stacks: dict[str, StackSpec]) -> dict[str, StackSpec]:
        return check_stacks(stacks)

    @field_validator("hosts", mode="before")
    @classmethod
    def _a_list(cls, raw: Any) -> Any:
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ValueError("expected a non-empty list of {name, address}")
        return raw

    @field_validator("hosts")
    @classmethod
    def _hosts_fit_the_lab(cls, hosts: tuple[HostSpec, ...], info: ValidationInfo) -> tuple[HostSpec, ...]:
        """Unique names and addresses; on the embedded lab, inside the lab network; keys where needed.

        Checks the hosts lab.yaml lists (pydantic does not validate the default ones).
        """
        backend, network = info.data.get("backend"), info.data.get("network")
        if backend is None or network is None:
            return hosts  # their own error is the one to report
        subnet = ipaddress.IPv4Network(network.subnet)
        guests = ipaddress.IPv4Network(network.guest_range)
        for i, host in enumerate(hosts):
            address = ipaddress.IPv4Address(host.address)
            # Only the embedded lab makes its hosts on the lab network; others' hosts exist already.
            if backend == "embedded" and address not in subnet:
                raise problem((i, "address"), f"{address} is not inside network.subnet {subnet}")
            if backend == "embedded" and (address in guests or host.address == network.runner_address):
                raise problem((i, "address"), f"{address} collides with the runner address or guest_range")
            if any(h.name == host.name for h in hosts[:i]):
                raise problem((i, "name"), f"{host.name!r} is used twice")
            if (any(h.address == host.address for h in hosts[:i])
                    or (backend == "embedded" and host.address == network.nfs_address)):
                raise problem((i, "address"), f"{address} is used twice")
            if "stacks" in info.data:
                check_host_stack(i, host.stack, info.data["stacks"], backend)
            if host.ssh_key is not None and backend != "static":
                raise problem((i, "ssh_key"), f"only the static backend takes a key (the {backend} lab makes its own)")
        if len(hosts) < 2:
            raise ValueError(f"the {backend} lab needs at least 2 hosts")
        for i, host in enumerate(hosts if backend == "static" else ()):
            if not host.ssh_key:
                raise problem((i, "ssh_key"), f"missing (the private key that logs in as {host.ssh_user})")
        return hosts

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_of_hosts(cls, raw: Any, info: ValidationInfo) -> Any:
        """Explicit pairs by host name, or consecutive hosts (hv1+hv2, hv3+hv4, ...; an odd last host joins none)."""
        if "hosts" not in info.data:
            return () if raw is None else raw  # the hosts' error is the one to report
        names = [h.name for h in info.data["hosts"]]
        if raw is None:
            return tuple((names[i], names[i + 1]) for i in range(0, len(names) - 1, 2))
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ValueError("expected a non-empty list of [source, destination] host names")
        taken: set[str] = set()
        for i, pair in enumerate(raw):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise problem(i, f"expected [source, destination], got {pair!r}")
            for name in pair:
                if name not in names:
                    raise problem(i, f"unknown host {name!r} (hosts: {', '.join(names)})")
            if pair[0] == pair[1]:
                raise problem(i, f"a pair needs two different hosts, got {pair[0]!r} twice")
            for name in pair:
                if name in taken:
                    raise problem(i, f"host {name!r} is already in another pair (pairs run side by side)")
            taken.update(pair)
        return raw


def parse_lab_config(data: Any, source: str = "<string>") -> LabConfig:
    """Validate a parsed lab.yaml document and return the typed config."""
    return validated(LabConfig, {} if data is None else data, root="lab.yaml", source=source)


def load_lab_config(path: str | os.PathLike | None = None) -> LabConfig:
    """Load lab.yaml from PATH, $LAB_CONFIG, or the repo default, in that order."""
    chosen = Path(path or os.environ.get("LAB_CONFIG") or DEFAULT_LAB_CONFIG)
    return load_file(chosen, "lab config", "pass --lab-config PATH or set LAB_CONFIG",
                     lambda data: parse_lab_config(data, str(chosen)))

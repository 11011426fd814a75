"""lab.yaml: the lab's shape, validated on load.

Every problem is reported as one line that names the field and what is
allowed, e.g. ``hosts[1].address: '300.1.1.1' is not an IPv4 address``.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.errors import ConfigError

DEFAULT_LAB_CONFIG = Path(__file__).resolve().parents[2] / "lab.yaml"
BACKENDS = ("embedded", "vagrant", "static")
STORAGE_MODES = ("shared", "nfs", "local")
ACCELERATORS = ("auto", "kvm", "tcg")
# Lab networks must never overlap these (see README, "Network").
FORBIDDEN_NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    ssh_user: str = "root"
    ssh_key: str | None = None  # static backend: the key to reach it


@dataclass(frozen=True)
class GuestSpec:
    memory_mib: int = 256
    vcpus: int = 1
    disk_mib: int = 32
    heartbeat_us: int = 1000
    boot_timeout_s: int = 90  # start to first heartbeat; raise it for slow labs (nested TCG)
    agent_timeout_s: int = 10  # default wait for an agent command's answer


@dataclass(frozen=True)
class HotpatchSpec:
    libcareplus_prefix: str | None = None  # where libcareplus is installed, if not on PATH
    build_cache: str = "/var/cache/kvm-acceptance-lab/qemu-hotpatch"  # QEMU source builds, by version + patch
    emulator: str | None = None  # a QEMU binary to patch instead of the cache's own build


@dataclass(frozen=True)
class NetworkSpec:
    subnet: str = "198.18.0.0/16"
    runner_address: str = "198.18.0.1"
    guest_range: str = "198.18.128.0/17"
    mtu: int = 1500
    nfs_address: str = "198.18.0.10"  # the NFS server host, with storage: nfs

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


@dataclass(frozen=True)
class LabConfig:
    name: str = "kvmlab"
    backend: str = "embedded"
    hosts: tuple[HostSpec, ...] = (HostSpec("hv1", "198.18.0.11"), HostSpec("hv2", "198.18.0.12"))
    network: NetworkSpec = field(default_factory=NetworkSpec)
    guest: GuestSpec = field(default_factory=GuestSpec)
    storage: str = "shared"
    accelerator: str = "auto"
    hotpatch: HotpatchSpec = field(default_factory=HotpatchSpec)
    vagrant: Any = None  # the vagrant backend's settings (lab/config/vagrant.py validates them)
    # Host pairs that xdist workers take from the pool (source, destination); default: consecutive hosts.
    pairs: tuple[tuple[str, str], ...] = (("hv1", "hv2"),)
    source: str = "<defaults>"

    def host(self, name: str) -> HostSpec:
        for spec in self.hosts:
            if spec.name == name:
                return spec
        known = ", ".join(h.name for h in self.hosts)
        raise ConfigError(f"unknown host {name!r}: this lab has {known}")


def _expect_mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _reject_unknown(data: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown key (allowed: {', '.join(allowed)})")


def _choice(data: dict, key: str, choices: tuple[str, ...], default: str, where: str = "") -> str:
    value = data.get(key, default)
    if value not in choices:
        raise ConfigError(f"{where}{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _int(data: dict, key: str, default: int, low: int, high: int, where: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}: {value!r} is not a whole number")
    if not low <= value <= high:
        raise ConfigError(f"{where}.{key}: {value} is out of range ({low} to {high})")
    return value


def _ipv4(value: Any, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address") from None


def _check_not_private(net: ipaddress.IPv4Network, where: str) -> None:
    for bad in FORBIDDEN_NETS:
        if net.overlaps(bad):
            raise ConfigError(f"{where}: {net} overlaps private range {bad}; use addresses inside 198.18.0.0/15")


LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range: never routed publicly


def _parse_network(data: dict) -> NetworkSpec:
    where = "network"
    _reject_unknown(data, ("subnet", "runner_address", "guest_range", "mtu", "nfs_address"), where)
    defaults = NetworkSpec()
    try:
        subnet = ipaddress.IPv4Network(str(data.get("subnet", defaults.subnet)))
    except ValueError:
        raise ConfigError(f"network.subnet: {data.get('subnet')!r} is not an IPv4 network like 198.18.0.0/15") from None
    _check_not_private(subnet, "network.subnet")
    if not subnet.subnet_of(LAB_RANGE):
        raise ConfigError(f"network.subnet: {subnet} is outside {LAB_RANGE}; lab networks stay inside it")
    runner = _ipv4(data.get("runner_address", defaults.runner_address), "network.runner_address")
    if runner not in subnet:
        raise ConfigError(f"network.runner_address: {runner} is not inside network.subnet {subnet}")
    try:
        guests = ipaddress.IPv4Network(str(data.get("guest_range", defaults.guest_range)))
    except ValueError:
        raise ConfigError(f"network.guest_range: {data.get('guest_range')!r} is not an IPv4 network") from None
    if not guests.subnet_of(subnet):
        raise ConfigError(f"network.guest_range: {guests} is not inside network.subnet {subnet}")
    if runner in guests:
        raise ConfigError(f"network.runner_address: {runner} lies inside network.guest_range {guests}")
    mtu = _int(data, "mtu", defaults.mtu, 576, 9000, where)
    nfs = _ipv4(data.get("nfs_address", defaults.nfs_address if "subnet" not in data else
                         str(next(iter(subnet.hosts())) + 9)), "network.nfs_address")
    if nfs not in subnet or nfs in guests or nfs == runner:
        raise ConfigError(f"network.nfs_address: {nfs} must be inside {subnet}, outside the guest range and not the runner's")
    return NetworkSpec(str(subnet), str(runner), str(guests), mtu, str(nfs))


def _parse_hosts(raw: Any, network: NetworkSpec, backend: str) -> tuple[HostSpec, ...]:
    if raw is None:
        return LabConfig().hosts
    if not isinstance(raw, list) or not raw:
        raise ConfigError("hosts: expected a non-empty list of {name, address}")
    subnet = ipaddress.IPv4Network(network.subnet)
    guests = ipaddress.IPv4Network(network.guest_range)
    hosts: list[HostSpec] = []
    for i, item in enumerate(raw):
        where = f"hosts[{i}]"
        item = _expect_mapping(item, where)
        _reject_unknown(item, ("name", "address", "ssh_user", "ssh_key"), where)
        name = item.get("name")
        if not isinstance(name, str) or not HOST_NAME.match(name):
            raise ConfigError(f"{where}.name: {name!r} is not a host name (lowercase letter, then letters, digits, '-'; at most 15)")
        if "address" not in item:
            raise ConfigError(f"{where}.address: missing (an IPv4 address inside {subnet})")
        address = _ipv4(item["address"], f"{where}.address")
        if backend == "embedded":
            if address not in subnet:
                raise ConfigError(f"{where}.address: {address} is not inside network.subnet {subnet}")
            if address in guests or str(address) == network.runner_address:
                raise ConfigError(f"{where}.address: {address} collides with the runner address or guest_range")
        if any(h.name == name for h in hosts):
            raise ConfigError(f"{where}.name: {name!r} is used twice")
        if any(h.address == str(address) for h in hosts) or (backend == "embedded" and str(address) == network.nfs_address):
            raise ConfigError(f"{where}.address: {address} is used twice")
        user = item.get("ssh_user", "root")
        key = item.get("ssh_key")
        if key is not None and backend != "static":
            raise ConfigError(f"{where}.ssh_key: only the static backend takes a key (the {backend} lab makes its own)")
        hosts.append(HostSpec(name, str(address), str(user), None if key is None else str(key)))
    if len(hosts) < 2:
        raise ConfigError(f"hosts: the {backend} lab needs at least 2 hosts")
    if backend == "static":
        for i, h in enumerate(hosts):
            if not h.ssh_key:
                raise ConfigError(f"hosts[{i}].ssh_key: missing (the private key that logs in as {h.ssh_user})")
    return tuple(hosts)


def _parse_pairs(raw: Any, hosts: tuple[HostSpec, ...]) -> tuple[tuple[str, str], ...]:
    """Explicit pairs by host name, or consecutive hosts (hv1+hv2, hv3+hv4, ...; an odd last host joins none)."""
    names = [h.name for h in hosts]
    if raw is None:
        return tuple((names[i], names[i + 1]) for i in range(0, len(names) - 1, 2))
    if not isinstance(raw, list) or not raw:
        raise ConfigError("pairs: expected a non-empty list of [source, destination] host names")
    pairs: list[tuple[str, str]] = []
    for i, pair in enumerate(raw):
        where = f"pairs[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"{where}: expected [source, destination], got {pair!r}")
        for name in pair:
            if name not in names:
                raise ConfigError(f"{where}: unknown host {name!r} (hosts: {', '.join(names)})")
        if pair[0] == pair[1]:
            raise ConfigError(f"{where}: a pair needs two different hosts, got {pair[0]!r} twice")
        taken = [n for n in pair if any(n in p for p in pairs)]
        if taken:
            raise ConfigError(f"{where}: host {taken[0]!r} is already in another pair (pairs run side by side)")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _parse_guest(data: dict) -> GuestSpec:
    where = "guest"
    _reject_unknown(data, ("memory_mib", "vcpus", "disk_mib", "heartbeat_us", "boot_timeout_s", "agent_timeout_s"), where)
    d = GuestSpec()
    return GuestSpec(
        memory_mib=_int(data, "memory_mib", d.memory_mib, 64, 65536, where),
        vcpus=_int(data, "vcpus", d.vcpus, 1, 64, where),
        disk_mib=_int(data, "disk_mib", d.disk_mib, 1, 1 << 20, where),
        heartbeat_us=_int(data, "heartbeat_us", d.heartbeat_us, 100, 1000, where),
        boot_timeout_s=_int(data, "boot_timeout_s", d.boot_timeout_s, 5, 3600, where),
        agent_timeout_s=_int(data, "agent_timeout_s", d.agent_timeout_s, 1, 600, where),
    )


def _parse_hotpatch(data: dict) -> HotpatchSpec:
    _reject_unknown(data, ("libcareplus_prefix", "build_cache", "emulator"), "hotpatch")
    for key, value in data.items():
        if value is not None and (not isinstance(value, str) or not value.startswith("/")):
            raise ConfigError(f"hotpatch.{key}: {value!r} is not an absolute path")
    return HotpatchSpec(**data)


def _parse_vagrant(data: Any) -> Any:
    if data is None:
        return None
    try:
        from lab.config.vagrant import parse_vagrant_settings
    except ImportError:
        raise ConfigError("vagrant: this version has no vagrant backend") from None
    return parse_vagrant_settings(_expect_mapping(data, "vagrant"))


def parse_lab_config(data: Any, source: str = "<string>") -> LabConfig:
    """Validate a parsed lab.yaml document and return the typed config."""
    if data is None:
        data = {}
    data = _expect_mapping(data, "lab.yaml")
    _reject_unknown(data, ("name", "backend", "hosts", "network", "guest", "storage", "accelerator", "hotpatch",
                           "vagrant", "pairs"), "")
    name = data.get("name", "kvmlab")
    if not isinstance(name, str) or not LAB_NAME.match(name):
        raise ConfigError(f"name: {name!r} is not a lab name (lowercase letter, then letters or digits; at most 8)")
    backend = _choice(data, "backend", BACKENDS, "embedded")
    network = _parse_network(_expect_mapping(data.get("network") or {}, "network"))
    hosts = _parse_hosts(data.get("hosts"), network, backend)
    return LabConfig(
        name=name,
        backend=backend,
        hosts=hosts,
        pairs=_parse_pairs(data.get("pairs"), hosts),
        network=network,
        guest=_parse_guest(_expect_mapping(data.get("guest") or {}, "guest")),
        storage=_choice(data, "storage", STORAGE_MODES, "shared"),
        accelerator=_choice(data, "accelerator", ACCELERATORS, "auto"),
        hotpatch=_parse_hotpatch(_expect_mapping(data.get("hotpatch") or {}, "hotpatch")),
        vagrant=_parse_vagrant(data.get("vagrant")),
        source=source,
    )


def load_lab_config(path: str | os.PathLike | None = None) -> LabConfig:
    """Load lab.yaml from PATH, $LAB_CONFIG, or the repo default, in that order."""
    chosen = Path(path or os.environ.get("LAB_CONFIG") or DEFAULT_LAB_CONFIG)
    try:
        text = chosen.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{chosen}: lab config not found (pass --lab-config PATH or set LAB_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read lab config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{chosen}: not valid YAML{at}: {problem}") from None
    try:
        return parse_lab_config(data, str(chosen))
    except ConfigError as exc:
        raise ConfigError(f"{chosen}: {exc}") from None

"""Field types the config files share: the lab's address rules, names, paths, numbers.

Lab networks stay inside 198.18.0.0/15 (RFC 2544's benchmarking range, never routed
publicly) and never overlap the private ranges, where this machine's own networks and
vagrant-libvirt's default (192.168.121.0/24) live. Each type checks one kind of value and
says what is wrong with it (`lab.config.validation` adds the field's path).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BeforeValidator

LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
FORBIDDEN_NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,14}")  # a network namespace's and a libvirt domain's name part
HOST_NAME_RULE = "lowercase letter, then letters, digits, '-'; at most 15"


def rule(ok: Callable[[Any], Any], says: str) -> AfterValidator:
    """A check that refuses a value `ok` finds false with ``<value!r> <says>``."""
    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(f"{value!r} {says}")
        return value
    return AfterValidator(check)


def _ipv4(value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _network(value: Any, like: str = "") -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 network{like}") from None


def _lab_network(value: Any) -> str:
    net = _network(value, f" like {LAB_RANGE}")
    for bad in FORBIDDEN_NETS:
        if net.overlaps(bad):
            raise ValueError(f"{net} overlaps private range {bad}; use addresses inside {LAB_RANGE}")
    if not net.subnet_of(LAB_RANGE):
        raise ValueError(f"{net} is outside {LAB_RANGE}; lab networks stay inside it")
    return str(net)


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{value!r} is not a positive number")
    return float(value)


IPv4 = Annotated[str, BeforeValidator(_ipv4)]  # an IPv4 address, as text
Network = Annotated[str, BeforeValidator(lambda v: str(_network(v)))]  # an IPv4 network, as text
LabNetwork = Annotated[str, BeforeValidator(_lab_network)]  # a network inside LAB_RANGE, off the private ranges
HostName = Annotated[str, rule(HOST_NAME.fullmatch, f"is not a host name ({HOST_NAME_RULE})")]
NonEmpty = Annotated[str, rule(str.strip, "is not a non-empty string")]
AbsPath = Annotated[str, rule(lambda v: v.startswith("/"), "is not an absolute path")]
PositiveNumber = Annotated[float, BeforeValidator(_positive)]  # int or float above 0, not a bool

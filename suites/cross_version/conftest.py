"""Fixtures of the cross-version suite: the lab's two hosts ordered by their stacks' versions, the
machine type both can run, and the refusals libvirt and QEMU make by design."""
from __future__ import annotations

import re
import time

import pytest

from lab.errors import LabError
from lab.migration.live import MigrationResult
from lab.runtime.hosts import Host

# libvirt words the errors of its "not supported" codes with fixed prefixes (src/util/virerror.c):
# VIR_ERR_CONFIG_UNSUPPORTED, VIR_ERR_OPERATION_UNSUPPORTED, VIR_ERR_ARGUMENT_UNSUPPORTED, VIR_ERR_NO_SUPPORT.
# A migration refused with one of them is a refusal by design, not a fault.
BY_DESIGN = ("unsupported configuration: ", "Operation not supported: ", "argument unsupported: ",
             "this function is not supported by the connection driver")


def refused_by_design(error: str) -> bool:
    return any(marker in error for marker in BY_DESIGN)


def refusal(result: MigrationResult, dst: Host) -> str:
    """libvirt's words when a failed migration was refused by design, else "".

    The source's error, or, when the source saw only its connection to the destination close ("End of file
    while reading data", seen from libvirt 11.3 refused by 9.0), the destination libvirtd's own error line
    logged within this migration's own window (from its start to a second after it failed). The caller asks
    only for a direction's first move: a refusal after a move went through is no design, it is a failure.
    """
    if refused_by_design(result.error):
        return result.error
    if "End of file while reading data" not in (result.error or ""):
        return ""  # the source said why it failed, and it was not a refusal by design
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(result.started_ns // 10**9))
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(result.finished_ns // 10**9 + 1))
    try:
        log = dst.run("tail -n 3000 /var/log/libvirt/libvirtd.log", check=False, timeout=30).stdout
    except LabError:
        return ""
    for line in log.splitlines():
        if since <= line[:19] <= until and " error : " in line:
            message = line.split(" error : ", 1)[1].split(" : ", 1)[-1]
            if refused_by_design(message):
                return f"{dst.name}'s libvirtd: {message} (the source reported: {result.error})"
    return ""


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


@pytest.fixture(scope="session")
def stack_pair(lab, host_versions) -> tuple[Host, Host]:
    """(older, newer): the lab's host pair on two different stacks, ordered by QEMU then libvirt version."""
    a, b = lab.hosts[0], lab.hosts[1]
    if a.stack == b.stack:
        pytest.skip(f"cross-version needs two hosts on different stacks; {a.name} and {b.name} both run stack "
                    f"{a.stack!r}: bring up a lab like labs/stacks.yaml and pass --lab-config labs/stacks.yaml")
    for host in (a, b):
        if "error" in host_versions[host.name]:
            pytest.fail(f"{host.name}: versions unknown: {host_versions[host.name]['error']}", pytrace=False)

    def key(host: Host) -> tuple:
        v = host_versions[host.name]
        return version_tuple(v["qemu_version"]), version_tuple(v["libvirt_version"])

    if key(a) == key(b):
        pytest.skip(f"stacks {a.stack!r} and {b.stack!r} run the same QEMU and libvirt versions")
    return (a, b) if key(a) < key(b) else (b, a)


@pytest.fixture(scope="session")
def pinned_machine(stack_pair, host_versions) -> str:
    """The older QEMU's own versioned machine type (pc-i440fx-7.2), offered by both hosts (or the suite fails
    saying which host lacks it: a newer QEMU drops old machine types only after their deprecation)."""
    old, new = stack_pair
    major, minor = version_tuple(host_versions[old.name]["qemu_version"])[:2]
    machine = f"pc-i440fx-{major}.{minor}"
    for host in (old, new):
        if machine not in machine_types(host):
            pytest.fail(f"{host.name} (stack {host.stack}) does not offer machine type {machine}: a guest of "
                        f"{old.name}'s QEMU cannot move there", pytrace=False)
    return machine


def machine_types(host: Host) -> set[str]:
    """The machine types the host's QEMU offers for x86_64, as libvirt lists them."""
    return set(re.findall(r"<machine[^>]*>([^<]+)</machine>", host.connect().getCapabilities()))

"""How a host runs a stack: mounts inside its own mount namespace, and the check that it took.

An overlay of the stack's trees over /usr (the trees on top, the system's /usr below), then a
bind mount of each module directory the stack brings, replacing the system's whole: libvirtd
loads every driver module of its directory and QEMU every module of its own, so left-over
modules of the installed version would be loaded by the new binaries and break them.
"""
from __future__ import annotations

import shlex

from lab.errors import StackError
from lab.runtime.state import StackRecord


def mount_lines(stack: StackRecord) -> list[str]:
    """Shell lines that put `stack` in place, run inside a fresh private mount namespace; none for system."""
    if not stack.layers:
        return []
    for layer in stack.layers:
        if any(c in layer for c in ":,\\"):
            raise StackError(f"stack {stack.name}: tree path {layer!r} has a ':' ',' or '\\', which overlayfs "
                             "cannot take; move the stacks cache")
    lower = ":".join([*stack.layers, "/usr"])
    lines = [f"mount -t overlay overlay -o {shlex.quote('lowerdir=' + lower)} /usr"]
    lines += [f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}" for src, dst in stack.binds.items()]
    return lines


def reported(version: int) -> str:
    """libvirt's number (10000002) as text (10.0.2)."""
    return f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"


def running_mismatch(stack: StackRecord, qemu: str, libvirt: str) -> str:
    """What differs between the stack and what the host's libvirtd reports, or "" when it is that stack."""
    problems = []
    for what, want, got in (("QEMU", stack.qemu_upstream, qemu), ("libvirt", stack.libvirt_upstream, libvirt)):
        if want and not (got == want or got.startswith(want + ".")):
            problems.append(f"{what} {got} where stack {stack.name!r} has {want}")
    return "; ".join(problems)

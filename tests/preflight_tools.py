"""What the preflight break tests share: the labs they break, one check run on them, and the record of
which checks were seen failing (tests/test_preflight_breaks_hosts.py, tests/test_preflight_breaks_guests.py,
tests/test_preflight_doctor.py; their fixtures are in tests/conftest.py).

kvmpf (198.19.20.0/24: hv1+hv2 for the breaks, hv3+hv4 a second pair for --all-pairs) is a lab of its own
so that breaking a host never disturbs other tests. Two checks compare the two hosts' QEMU and libvirt
builds (machine-type, versions): those run on kvmpfs (198.19.22.0/24), whose hv1 runs the installed QEMU
7.2 / libvirt 9.0 and hv2 bookworm-backports' QEMU 10.0.2 / libvirt 11.3, so the destination is really
older than its source one way. Every module that breaks them is in the xdist group "preflight-breaks":
one worker, one such lab at a time.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.backends import get_backend
from lab.preflight import CHECKS, FAIL, PASS, WARN, context_for, plan_for, run_preflight
from lab.runtime.lab import Lab
from tests.labtools import lab_up

MARKS = [pytest.mark.lab, pytest.mark.xdist_group("preflight-breaks"), pytest.mark.usefixtures("shared_lab")]
NET = "198.19.20"
STACKS_NET = "198.19.22"
NEWER_MACHINE = "pc-i440fx-10.0"  # QEMU 10.0's own machine type: QEMU 7.2 has no such type
# Which module breaks which check; together, every check (test_preflight_doctor.py holds them to that).
HOST_CHECKS = ("ssh-access", "libvirt-read-write", "p2p-reach", "clock-sync", "reachable", "same-segment", "mtu",
               "migration-ports", "daemon-port", "names", "storage-mode", "storage-filesystem", "storage-writable",
               "destination-room", "destination-memory", "destination-vcpus")
GUEST_CHECKS = ("cpu-model", "machine-type", "versions", "vm-running", "vm-persistent", "vm-devices", "disk-cache",
                "max-downtime", "bandwidth", "accelerator", "nested")
PROVEN_WITH_GUEST: set[str] = set()
PROVEN_WITHOUT_GUEST: set[str] = set()
UNBREAKABLE_HERE: set[str] = set()  # checks whose precondition this machine cannot lose (said in their skip)


@contextlib.contextmanager
def pf_lab(directory: Path) -> Iterator[tuple[Lab, object]]:
    path = directory / "kvmpf.yaml"
    path.write_text(f"name: kvmpf\naccelerator: auto\n"
                    f"network: {{subnet: {NET}.0/24, runner_address: {NET}.1, guest_range: {NET}.128/25}}\n"
                    "hosts:\n" + "".join(f"  - {{name: hv{i}, address: {NET}.1{i}}}\n" for i in range(1, 5)))
    with lab_up(path) as lab:
        yield lab, get_backend(lab.config)


@contextlib.contextmanager
def two_stacks_lab(directory: Path) -> Iterator[Lab]:
    """hv1 (older stack) and hv2 (newer stack): a rollback hv2 -> hv1 meets a really older destination."""
    path = directory / "kvmpfs.yaml"
    path.write_text("name: kvmpfs\naccelerator: auto\n"
                    f"network: {{subnet: {STACKS_NET}.0/24, runner_address: {STACKS_NET}.1, "
                    f"guest_range: {STACKS_NET}.128/25}}\n"
                    "stacks:\n  backports: {source: archive, suite: bookworm-backports, qemu: 10.0.2, libvirt: 11.3.0}\n"
                    f"hosts:\n  - {{name: hv1, address: {STACKS_NET}.11}}\n"
                    f"  - {{name: hv2, address: {STACKS_NET}.12, stack: backports}}\n")
    with lab_up(path) as lab:
        yield lab


def planned(lab, **changes):
    """The lab's planned guest (what doctor checks without --guest), with `changes` to its fields."""
    return dataclasses.replace(plan_for(lab), **changes)


def check_one(lab, name, guest=None, src=None, dst=None, **ctx_overrides):
    """One check for `guest`, or without one for the planned guest (override it with plan=planned(...)), on
    the lab's first pair or src -> dst."""
    ctx = context_for(lab, src=src, dst=dst, guest=guest.name if guest else None)
    ctx = dataclasses.replace(ctx, **ctx_overrides) if ctx_overrides else ctx
    (result,) = run_preflight(ctx, [name])
    return result


def proves(name, lab, broken_text, guest=None, expect=FAIL, **ctx_overrides):
    """Assert the check fires with its message on the broken lab; remember it was proven, and how."""
    result = check_one(lab, name, guest, **ctx_overrides)
    assert result.status == expect, result.line()
    assert broken_text in result.seen, result.line()
    assert result.remedy
    (PROVEN_WITH_GUEST if guest else PROVEN_WITHOUT_GUEST).add(name)
    return result


def passes(name, lab, guest=None, **ctx_overrides):
    result = check_one(lab, name, guest, **ctx_overrides)
    assert result.status in (PASS, WARN), result.line()
    return result


@contextlib.contextmanager
def broken(apply, restore):
    apply()
    try:
        yield
    finally:
        restore()


def assert_all_proven(names: tuple[str, ...]) -> None:
    """Run last in a break module: each of its checks was seen failing on a broken lab, and one the hosts
    can answer also without a guest. Skipped when none of them ran (a -k selection of other tests)."""
    proven = PROVEN_WITH_GUEST | PROVEN_WITHOUT_GUEST | UNBREAKABLE_HERE
    if not proven & set(names):
        pytest.skip("run with the break tests (the whole module) to account for every check")
    unproven = sorted(set(names) - proven)
    assert not unproven, f"checks never seen failing on a broken lab: {', '.join(unproven)}"
    answerable = {name for name in names if not CHECKS[name].needs_guest}
    no_guest = sorted(answerable - PROVEN_WITHOUT_GUEST - UNBREAKABLE_HERE)
    assert not no_guest, f"checks the hosts answer, never seen failing without a guest: {', '.join(no_guest)}"

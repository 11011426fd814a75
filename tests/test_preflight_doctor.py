"""`python -m lab doctor` on kvmpf, as a user runs it: every check without a guest, a planned guest, all
pairs, bad input (tests/preflight_tools.py says which lab)."""
from __future__ import annotations

import json
import re
import time

import pytest

from lab.preflight import CHECKS, NEEDS_A_GUEST, SKIP
from tests.labtools import lab_cli
from tests.preflight_tools import GUEST_CHECKS, HOST_CHECKS, MARKS, broken

pytestmark = MARKS


def test_every_check_is_broken_by_one_break_module():
    assert sorted(HOST_CHECKS + GUEST_CHECKS) == sorted(CHECKS), "a check no break module owns is never proven"


def test_doctor_without_a_guest_answers_every_check_the_hosts_can(pf):
    lab, _ = pf
    config = lab.config.source
    proc = lab_cli(config, "doctor", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    results = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(results) == set(CHECKS)
    for name, entry in CHECKS.items():
        status = results[name]["status"]
        assert (status == SKIP) == entry.needs_guest, results[name]
        assert not entry.needs_guest or results[name]["seen"] == NEEDS_A_GUEST
    text = lab_cli(config, "doctor")
    assert "preflight hv1 -> hv2, planned guest 256 MiB, 1 vCPU, 32 MiB disk, CPU qemu64, machine pc" in text.stdout
    assert "SKIP" not in text.stdout, text.stdout
    assert ("not checked: vm-running, vm-persistent, vm-devices, disk-cache (needs an existing guest: pass "
            "--guest NAME)") in text.stdout.splitlines(), text.stdout


def test_doctor_fails_destination_memory_for_a_planned_guest_bigger_than_free_memory(pf):
    lab, _ = pf
    proc = lab_cli(lab.config.source, "doctor", "--memory", "1T", "--check", "destination-memory")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "planned guest 1048576 MiB, 1 vCPU" in proc.stdout
    assert re.search(r"destination-memory  FAIL    hv2 has \d+ MiB available, planned guest needs 1048576 MiB "
                     r"\+ 128 MiB margin\n +-> free memory on hv2", proc.stdout), proc.stdout


def test_doctor_all_pairs_prints_a_table_per_pair_and_a_summary(pf):
    """kvmpf's second pair hv3 -> hv4 is broken (hv4's MTU); the first stays ready."""
    lab, backend = pf
    with broken(lambda: backend.host_exec("hv4", "ip", "link", "set", "br0", "mtu", "1400"),
                lambda: backend.host_exec("hv4", "ip", "link", "set", "br0", "mtu", "1500")):
        started = time.monotonic()
        proc = lab_cli(lab.config.source, "doctor", "--all-pairs")
        took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    headers = [line for line in proc.stdout.splitlines() if line.startswith("preflight ")]
    assert [h.split(",")[0] for h in headers] == ["preflight hv1 -> hv2", "preflight hv3 -> hv4"], proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 pair(s): 1 ready, 1 not ready; hv3 -> hv4: mtu failed", proc.stdout
    assert took < 20, f"two pairs side by side took {took:.1f} s"
    ready = lab_cli(lab.config.source, "doctor", "--all-pairs", "--json")
    assert ready.returncode == 0, ready.stdout[-2000:] + ready.stderr
    assert [(p["src"], p["dst"]) for p in json.loads(ready.stdout)] == [("hv1", "hv2"), ("hv3", "hv4")]


@pytest.mark.parametrize("args, line", [
    (["--memory", "lots"], "--memory: 'lots' is not a size (MiB, or with a unit: 2048, 4G, 1T)"),
    (["--vcpus", "0"], "--vcpus: '0' is not a number of vCPUs (1 or more)"),
    (["--disk=-5G"], "--disk: '-5G' is not a size (MiB, or with a unit: 2048, 4G, 1T)"),
    (["--disk"], "doctor: argument --disk: expected one argument (`python -m lab doctor --help`)"),
    (["--cpu-model", "Sky lake"], "--cpu-model: 'Sky lake' is not a CPU model name"),
    (["--max-downtime", "0.5"], "--max-downtime: '0.5' is not a whole number of milliseconds"),
    (["--src", "hv9"], "unknown host 'hv9' for --src: this lab has hv1, hv2, hv3, hv4"),
    (["--src", "hv2", "--dst", "hv2"], "source and destination are both hv2: name two different hosts (--src, --dst)"),
    (["--all-pairs", "--dst", "hv2"], "--all-pairs checks every pair of lab.yaml for the planned guest"),
    (["--guest", "nosuch"], "guest 'nosuch' not found on hv1"),
    (["--check", "nosuch"], "unknown preflight check 'nosuch'"),
])
def test_doctor_bad_input_is_one_line(pf, args, line):
    lab, _ = pf
    proc = lab_cli(lab.config.source, "doctor", *args)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    (only,) = proc.stderr.splitlines()
    assert only.startswith("lab: error: ") and line in only, only


def test_doctor_guest_and_planned_guest_flags_do_not_mix(pf, make_guest):
    lab, _ = pf
    guest = make_guest(start=False, wait=False)
    proc = lab_cli(lab.config.source, "doctor", "--guest", guest.name, "--memory", "4G", "--machine", "q35")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"lab: error: --memory, --machine describe a planned guest; with --guest "
                                        f"{guest.name} the guest's own settings are checked: drop one or the other"]

"""What a failed test keeps, collected from a real guest on the session lab: the logs of every host
and, while the guest's QEMU still runs, where each of its threads is (kernel wait channel and stack,
eu-stack's user-space frames), the evidence a stalled guest is diagnosed from."""
from __future__ import annotations

import re

import pytest

from lab.results.evidence import collect

pytestmark = pytest.mark.lab


def test_a_running_guest_leaves_its_logs_and_its_qemu_threads(lab, guest, src_host, tmp_path):
    kept = {p.name for p in collect(lab, guest.name, tmp_path)}
    for name in (f"{guest.name}.qemu.log", f"{guest.name}.serial", f"{guest.name}.threads", "libvirtd.log"):
        assert f"{src_host.name}-{name}" in kept, kept
    if lab.state.backend == "embedded":  # its hosts' sshd log to a file: why a p2p session ended is in it
        assert "Server listening on" in (tmp_path / f"{src_host.name}-sshd.log").read_text()
    threads = (tmp_path / f"{src_host.name}-{guest.name}.threads").read_text()
    assert threads.startswith("QEMU pid ") and "guest=" + guest.name in threads.splitlines()[0]
    vcpu = [line for line in threads.splitlines() if line.startswith("== thread ") and " CPU 0/" in line]
    assert vcpu and re.search(r" state=[RSDTtIZ] wchan=\S+ syscall=", vcpu[0]), threads[:2000]
    assert "== eu-stack" in threads and "TID " in threads, threads[-2000:]
    # The guest's serial log carries warnings (loglevel=5): a soft lockup's call trace would reach it.
    assert "loglevel=5" in guest.domain().XMLDesc(0)


def test_a_guest_whose_qemu_is_gone_has_no_threads_to_show(lab, guest, src_host, tmp_path):
    guest.domain().destroy()
    kept = {p.name for p in collect(lab, guest.name, tmp_path)}
    assert f"{src_host.name}-{guest.name}.qemu.log" in kept
    assert not any(name.endswith(".threads") for name in kept), kept

"""Every check of lab.migration.integrity.inspect (the verdict each migration ends with) sees its own
failure, made for real on a running guest: the guest on the wrong host, its disk rewritten behind the
fingerprint's back, its disk failing writes in QEMU's block layer, its QEMU aborting, a hard reset, its network link down, the oracle's own settings gone or its sweep
standing still (its agent told behind the harness's back). The memory checks (the fill pattern and the
dirty-page oracle's wrong pages) are broken for real in tests/test_agent_oracle.py.
"""
from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import libvirt_qemu
import pytest

from lab.errors import GuestError
from lab.migration.integrity import echo_silence, inspect, memory_oracle, take_fingerprint
from lab.results.verdicts import Kind

pytestmark = pytest.mark.lab


def _kinds(findings) -> set[Kind]:
    return {f.kind for f in findings}


def test_an_untouched_guest_passes_every_check(lab, guest, src_host):
    """The checks can pass: inspected where it runs, with nothing changed, there is no finding."""
    before = take_fingerprint(guest)
    assert inspect(guest, before, lab.hosts, src_host).findings == []


def test_a_guest_on_another_host_than_expected_is_a_failed_migration(lab, guest, dst_host):
    before = take_fingerprint(guest)
    found = inspect(guest, before, lab.hosts, dst_host).findings
    assert [f.kind for f in found if f.kind == Kind.MIGRATION_FAILED] == [Kind.MIGRATION_FAILED], found
    assert f"expected only {dst_host.name}" in found[0].text


def test_a_disk_rewritten_after_the_fingerprint_is_a_changed_disk(lab, guest, src_host):
    before = take_fingerprint(guest)
    guest.agent("diskwrite", 4321, 4, timeout=60)  # other data over the same 4 MiB
    found = inspect(guest, before, lab.hosts, src_host).findings
    assert _kinds(found) == {Kind.DISK_CHANGED}, found


def _qmp(guest, command: str, **arguments) -> dict:
    reply = libvirt_qemu.qemuMonitorCommand(guest.domain(), json.dumps({"execute": command, "arguments": arguments}), 0)
    return json.loads(reply)


def _fail_writes(guest, failing: bool) -> None:
    """Put a blkdebug node that fails every write (EIO) under the disk's qcow2 node, or take it out again
    (blockdev-reopen): QEMU's block layer refusing writes, as it does to an image left inactive."""
    nodes = _qmp(guest, "query-named-block-nodes", flat=True)["return"]
    # libvirt's -blockdev names: libvirt-N-format (the qcow2 node the disk uses) over libvirt-N-storage (the file)
    qcow2 = next(n for n in nodes if n["drv"] == "qcow2" and n["node-name"].endswith("-format"))
    storage = qcow2["node-name"].removesuffix("-format") + "-storage"
    assert storage in {n["node-name"] for n in nodes}, [(n["node-name"], n["drv"]) for n in nodes]
    if failing:
        _qmp(guest, "blockdev-add", driver="blkdebug", **{"node-name": "lab-fail-writes"}, image=storage,
             **{"inject-error": [{"event": "pwritev", "errno": 5, "iotype": "write"}]})
    reopened = _qmp(guest, "blockdev-reopen", options=[{"driver": "qcow2", "node-name": qcow2["node-name"],
                                                         "file": "lab-fail-writes" if failing else storage}])
    assert "error" not in reopened, reopened
    if not failing:
        _qmp(guest, "blockdev-del", **{"node-name": "lab-fail-writes"})


def test_a_disk_that_refuses_writes_is_unwritable(lab, guest, src_host):
    """Reading the disk back shows nothing; writing to it does. The guest keeps running, its disk fails writes."""
    before = take_fingerprint(guest)
    _fail_writes(guest, True)
    try:
        found = inspect(guest, before, lab.hosts, src_host).findings
    finally:
        _fail_writes(guest, False)
    assert _kinds(found) == {Kind.DISK_UNWRITABLE}, found
    assert f"does not take writes on {src_host.name}" in found[0].text
    assert inspect(guest, before, lab.hosts, src_host).findings == []  # the disk back as it was


def test_a_qemu_that_aborted_is_named_with_its_own_last_words(lab, guest, src_host):
    """The guest's QEMU aborts (SIGABRT, by its pid file on the host, as a failed assertion does): the checks
    say QEMU ended, crashed, quoting its log, rather than waiting out a reboot that cannot come."""
    before = take_fingerprint(guest)
    src_host.run(f"kill -ABRT $(cat /run/libvirt/qemu/{guest.name}.pid)")
    found = inspect(guest, before, lab.hosts, src_host).findings
    ended = [f for f in found if f.kind == Kind.QEMU_ENDED]
    assert len(ended) == 1 and "(crashed)" in ended[0].text and "reason=crashed" in ended[0].text, found


def test_a_hard_reset_is_a_reboot(lab, guest, src_host):
    before = take_fingerprint(guest)
    guest.domain().reset(0)  # the guest's power button, as a crash with panic=-1 would
    found = inspect(guest, before, lab.hosts, src_host).findings
    assert Kind.GUEST_REBOOTED in _kinds(found), found
    # The new boot has no fill pattern: the memory check says so too rather than passing.
    assert Kind.MEMORY_PATTERN in _kinds(found), found


def _set_link(guest, state: str) -> None:
    dom = guest.domain()
    nic = ET.fromstring(dom.XMLDesc(0)).find("./devices/interface")
    for old in nic.findall("link"):
        nic.remove(old)
    ET.SubElement(nic, "link", state=state)
    dom.updateDeviceFlags(ET.tostring(nic, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)


def test_a_guest_whose_link_is_down_is_echo_silent(guest, src_host):
    assert echo_silence(guest, src_host) is None
    _set_link(guest, "down")
    try:
        found = echo_silence(guest, src_host)
    finally:
        _set_link(guest, "up")
    assert found is not None and found.kind == Kind.ECHO_SILENT, found
    assert "of 10 echo probes in" in found.text and found.text.endswith(f"on {src_host.name}"), found.text
    assert echo_silence(guest, src_host) is None  # the link back up: it answers again


def test_the_oracles_own_settings_gone_are_lost_pages(lab, guest, src_host):
    """What QEMU 7.2.22 under TCG did to the guest's agent (tests/test_settings_honoured.py read 0.0 MiB/s after
    such a move): the sweep's settings, written into guest memory before the migration, were not there after
    it. Made here by telling the agent a smaller region behind the harness's back."""
    before = take_fingerprint(guest)
    guest.agent("dirty", 2, 16)
    memory_oracle(guest)
    guest.control.command("dirty", 2, 4, timeout=30)  # not through guest.agent: the harness still expects 16 MiB
    found = inspect(guest, before, lab.hosts, src_host).findings
    assert _kinds(found) == {Kind.LOST_PAGES}, found
    assert "the oracle's own state was lost" in found[0].text and "1024 pages" in found[0].text


def test_an_oracle_whose_sweep_stood_still_checked_nothing(lab, guest, src_host):
    before = take_fingerprint(guest)
    guest.agent("dirty", 2, 16)
    time.sleep(1.0)
    guest.control.command("dirty", 0.0001, 16, timeout=30)  # the same region, a writer that no longer writes
    memory_oracle(guest)  # after the change: the reading is where the writer stands still from now on
    time.sleep(1.0)
    found = inspect(guest, before, lab.hosts, src_host).findings
    assert _kinds(found) == {Kind.ORACLE_IDLE}, found
    assert "did not advance" in found[0].text


def test_an_oracle_reply_without_a_figure_is_an_error_not_zero():
    """A stand-in agent (a fake: the real one always sends every field) whose reply lacks what it checked."""
    reply = {"sweep_pages": "0", "sweep_round": "0", "sweep_pos": "0", "hot_pages": "16", "hot_rounds": "9",
             "hot_wrong": "0", "sweep_wrong": "0", "first": ""}  # no scan_wrong
    fake = SimpleNamespace(name="g", agent=lambda *a, **k: reply, last_oracle=None)
    with pytest.raises(GuestError, match="lacks scan_wrong"):
        memory_oracle(fake)

"""What must survive a migration: memory (the fill pattern and the dirty-page oracle), the disk,
the boot, the network answer, and the guest on exactly one host. Each problem is a Finding of
its own kind, so a known defect can explain exactly the findings it causes and no others."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import libvirt

from lab.errors import AgentTimeout, GuestError, LabError
from lab.guest.domain import Guest
from lab.migration.fault_run import domain_state
from lab.results.verdicts import Finding, Kind
from lab.runtime.hosts import Host

ORACLE_LINE = re.compile(r"LAB-ORACLE-WRONG writer=(\w+) addr=(0x[0-9a-f]+) found=(\d+) expected=(\d+)")


@dataclass(frozen=True)
class Fingerprint:
    boot_id: str
    fill_mib: int
    disk_sum: str | None
    seed: int = 1234  # what the disk's data was made from (written again to show the disk takes writes)


def take_fingerprint(guest: Guest, seed: int = 1234, fill_mib: int = 32, disk_mib: int = 4) -> Fingerprint:
    """Fill guest memory with a known pattern and write known data to its disk; remember both.

    Also reads (and so resets) the dirty-page oracle, so the next reading covers the migration.
    """
    guest.agent("fill", seed, fill_mib, timeout=60)
    disk_sum = guest.agent("diskwrite", seed, disk_mib, timeout=60)["sum"] if guest.config.disk else None
    memory_oracle(guest)
    return Fingerprint(guest.info()["boot_id"], fill_mib, disk_sum, seed)


ORACLE_FIELDS = ("sweep_pages", "sweep_round", "sweep_pos", "scan_wrong", "sweep_wrong", "hot_pages", "hot_rounds",
                 "hot_wrong")
PAGES_PER_MIB = 256  # the agent's 4 KiB pages


def memory_oracle(guest: Guest) -> dict:
    """The agent's dirty-page oracle: the sweep region scanned now, plus what the sweep writer and the
    hot-set writer found wrong since the last reading (which this one resets). Figures as integers; a reply
    without one of them is an error, never a zero. The reading is kept on the guest (progress_findings)."""
    reply = guest.agent("oracle", timeout=60)
    doc = {k: int(v, 0) for k, v in reply.items() if k not in ("first",) and re.fullmatch(r"(0x)?[0-9a-f]+", v)}
    missing = [k for k in ORACLE_FIELDS if k not in doc]
    if missing:
        raise GuestError(f"{guest.name}: the oracle's reply lacks {', '.join(missing)}: {reply}; an agent that does "
                         "not say what it checked has checked nothing")
    doc["first"] = [dict(zip(("address", "found", "expected"), item.split(":")))
                    for item in reply.get("first", "").split(",") if item]
    doc["wrong"] = doc["scan_wrong"] + doc["sweep_wrong"] + doc["hot_wrong"]
    guest.last_oracle = doc
    return doc


def progress_findings(guest: Guest, before: dict | None, after: dict) -> list[Finding]:
    """The oracle proves it ran: the sweep covers the region the guest was asked to dirty, its position moved on
    since the previous reading while a rate was asked, and the hot set's rounds moved on. Where the sweep's own
    configuration is gone (written into guest memory before the migration, not there after it), the guest lost
    writes: that is lost pages, with this as its evidence, not an ignored setting."""
    found = []
    expected = guest.dirty_region_mib * PAGES_PER_MIB if guest.dirty_rate_mibs > 0 else None
    if expected is not None and after["sweep_pages"] != expected:
        found.append(Finding(Kind.LOST_PAGES, f"the oracle's own state was lost: its sweep writer covers "
                                              f"{after['sweep_pages']} pages (round {after['sweep_round']}) where "
                                              f"{expected} were set ({guest.dirty_region_mib} MiB at "
                                              f"{guest.dirty_rate_mibs:g} MiB/s): the agent's writes of its own "
                                              "settings did not reach the destination, and the sweep checked nothing"))
    elif expected is not None and before is not None and before["sweep_pages"] == expected:
        swept = (after["sweep_round"] - before["sweep_round"]) * expected + after["sweep_pos"] - before["sweep_pos"]
        if swept <= 0:
            found.append(Finding(Kind.ORACLE_IDLE, f"the oracle's sweep did not advance since its last reading "
                                                   f"(round {before['sweep_round']}, page {before['sweep_pos']}): "
                                                   "the writes it checks were not made"))
    if before is not None and after["hot_rounds"] <= before["hot_rounds"]:
        found.append(Finding(Kind.ORACLE_IDLE, f"the oracle's hot set did not advance since its last reading "
                                               f"({before['hot_rounds']} rounds, now {after['hot_rounds']})"))
    return found


def oracle_finding(report: dict) -> Finding | None:
    if not report.get("wrong"):
        return None
    first = ", ".join(f"{w['address']} (found {w['found']}, expected {w['expected']})" for w in report["first"][:4])
    return Finding(Kind.LOST_PAGES,
                   f"lost writes: {report['wrong']} pages (scan {report['scan_wrong']} of {report['sweep_pages']}, "
                   f"sweep writer {report['sweep_wrong']}, hot set {report['hot_wrong']}), first at {first}")


def serial_oracle_lines(guest: Guest, hosts: tuple[Host, ...]) -> list[str]:
    """LAB-ORACLE-WRONG lines the agent printed on the serial console (they outlive a crashed guest) that no
    earlier call reported."""
    lines = []
    for host in hosts:
        try:
            text = host.run(f"cat /var/log/libvirt/qemu/{guest.name}.serial", check=False, timeout=20).stdout
        except LabError:
            continue
        lines += [f"{host.name}: {m.group(0)}" for m in ORACLE_LINE.finditer(text)]
    # A line is the evidence of the move after which it was first seen, not of every later one.
    new = [line for line in lines if line not in guest.serial_reported]
    guest.serial_reported.update(new)
    return new


@dataclass(frozen=True)
class Inspection:
    findings: list[Finding]
    oracle: dict | None  # the dirty-page oracle's reading; None when the guest rebooted (its state is gone)
    dirty_mibs: float | None  # the rate the agent achieved over the last second, as it reports it


def check_intact(guest: Guest, before: Fingerprint, hosts: tuple[Host, ...], expected_host: Host,
                 disk_mib: int = 4) -> list[Finding]:
    """Findings after a migration; an empty list means the guest came through whole."""
    return inspect(guest, before, hosts, expected_host, disk_mib).findings


def inspect(guest: Guest, before: Fingerprint, hosts: tuple[Host, ...], expected_host: Host,
            disk_mib: int = 4) -> Inspection:
    """Everything checked after a migration, with the oracle's reading for the record."""
    findings = []
    oracle = None
    where = [h.name for h in guest.locate(hosts)]
    if where != [expected_host.name]:
        findings.append(Finding(Kind.SPLIT_BRAIN if len(where) > 1 else Kind.MIGRATION_FAILED,
                                f"guest runs on {where or 'no host'}, expected only {expected_host.name}"))
    try:
        info = guest.info()
    except AgentTimeout:
        ended = qemu_ended(guest, expected_host)
        if ended:  # nothing left to answer
            return Inspection(findings + [ended], None, None)
        # A guest whose kernel crashed reboots (panic=-1); give it its boot time to answer again.
        try:
            guest.agent("info", timeout=guest.config.boot_timeout_s)
            info = guest.info()
        except AgentTimeout:
            findings.append(Finding(Kind.ECHO_SILENT, f"the guest agent does not answer on {expected_host.name} "
                                                      f"within {guest.config.boot_timeout_s:.0f} s of arriving"))
            seen = serial_oracle_lines(guest, hosts)
            if seen:
                findings.append(Finding(Kind.LOST_PAGES, f"lost writes seen on the serial console: {'; '.join(seen[:4])}"))
            return Inspection(findings, None, None)
    if info["boot_id"] != before.boot_id:
        findings.append(Finding(Kind.GUEST_REBOOTED, f"guest rebooted: boot id {before.boot_id} became {info['boot_id']}"))
        seen = serial_oracle_lines(guest, hosts)
        if seen:  # the oracle's own evidence from before the reboot
            findings.append(Finding(Kind.LOST_PAGES, f"lost writes seen on the serial console before the reboot: "
                                                     f"{'; '.join(seen[:4])}"))
    else:
        previous = guest.last_oracle
        oracle = memory_oracle(guest)
        lost = oracle_finding(oracle)
        if lost:
            findings.append(lost)
        findings += progress_findings(guest, previous, oracle)
    try:
        verify = guest.agent("verify", timeout=60)
    except GuestError as exc:
        verify = {"error": str(exc)}
    if verify.get("bad_words") != "0":
        findings.append(Finding(Kind.MEMORY_PATTERN, f"memory pattern damaged: {verify}"))
    if before.disk_sum is not None:
        now = guest.agent("disksum", disk_mib, timeout=60)["sum"]
        if now != before.disk_sum:
            findings.append(Finding(Kind.DISK_CHANGED, f"disk checksum changed: {before.disk_sum} became {now}"))
        else:
            findings += disk_write_findings(guest, before, disk_mib, expected_host)
    silent = qemu_ended(guest, expected_host) or echo_silence(guest, expected_host)  # a dead QEMU answers nothing
    if silent:
        findings.append(silent)
    return Inspection(findings, oracle, float(info["dirty_mibs"]) if "dirty_mibs" in info else None)


def disk_write_findings(guest: Guest, before: Fingerprint, disk_mib: int, host: Host) -> list[Finding]:
    """The guest's disk must still take writes where it runs. A migration hands the disk images over at the
    switchover (the source inactivates them); a source that gets its guest back after a failure or a cancel
    there must take them back first, or the guest's next write fails, or aborts QEMU (QEMU < 8.1 without
    6dab4c93ecfa). Reading shows nothing of it: the same data is written again, so the checksum stays."""
    try:
        guest.agent("diskwrite", before.seed, disk_mib, timeout=60)  # written and fsync'ed, or an error
    except GuestError as exc:
        return [Finding(Kind.DISK_UNWRITABLE, f"the guest's disk does not take writes on {host.name}: {exc}")]
    return []


QEMU_LOG_SAYS = re.compile(r"^qemu-system|shutting down")


def qemu_ended(guest: Guest, host: Host) -> Finding | None:
    """The guest's QEMU ended by itself during the checks where the guest ran (a write to an image left inactive
    aborts QEMU 7.2 in the block layer): the finding quotes QEMU's own last words from its log."""
    state, reason = domain_state(host, guest.name)
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
        return None
    log = host.run(f"tail -n 20 /var/log/libvirt/qemu/{guest.name}.log", check=False, timeout=20).stdout
    said = [line for line in log.splitlines() if QEMU_LOG_SAYS.search(line)]
    if state is None and not (said and "reason=crashed" in said[-1]):
        return None  # no such domain there (a transient one that crashed is gone, but its log says so)
    crashed = (state, reason) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED) \
        or bool(said and "reason=crashed" in said[-1])
    now = "crashed" if crashed else {None: "no domain", libvirt.VIR_DOMAIN_SHUTOFF: "shut off"}.get(state, f"state {state}")
    return Finding(Kind.QEMU_ENDED, f"the guest's QEMU on {host.name} ended ({now}): "
                                    + (" | ".join(said[-3:]) or "its log says nothing of it"))


ECHO_ANSWERS = 10


def echo_silence(guest: Guest, host: Host) -> Finding | None:
    """The guest's network answers on `host`: ECHO_ANSWERS echo probes (1 ms apart) within the lab's agent
    wait. A healthy guest answers them in about 10 ms; a slow lab (nested TCG) may need seconds, not a
    fixed 0.3 s window, which a Vagrant guest once missed with 7 answers."""
    prober = guest.echo_prober()
    began = time.monotonic()
    deadline = began + guest.config.agent_timeout_s
    try:
        while prober.replies() < ECHO_ANSWERS and time.monotonic() < deadline:
            time.sleep(0.01)
        if prober.replies() < ECHO_ANSWERS:
            return Finding(Kind.ECHO_SILENT, f"guest answered only {prober.replies()} of {ECHO_ANSWERS} echo probes "
                                             f"in {time.monotonic() - began:.1f} s on {host.name}")
        return None
    finally:
        prober.close()
        guest.probes.remove(prober)

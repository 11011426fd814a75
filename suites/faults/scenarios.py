"""Fault scenarios as data: what breaks, at which point of the migration, and what libvirt or QEMU
documents must follow. The documented outcome is written next to each scenario and is what the
suite asserts (runner.py); a scenario's id is what pytest shows.

Where the guest must end:
- "source": the fault came before the switchover completed. libvirt: "the source keeps running"
  (a failed or cancelled precopy migration resumes the guest on the source, the destination's
  incoming domain is removed).
- "destination": the migration completes (a short cut TCP rides out), or a postcopy migration is
  recovered with VIR_MIGRATE_POSTCOPY_RESUME (libvirt >= 8.5).
- "answer": where libvirt's answer says (an abort that may come too late: the call failed, the source; it
  succeeded, the destination).
- "lost": QEMU documents that after the postcopy switch neither side holds the whole guest: losing
  the destination loses the guest. Both sides must say so; nothing may claim success.
"""
from __future__ import annotations

from dataclasses import dataclass

LINK_MIBS = 8  # precopy bandwidth cap: ~48 MiB of filled memory keep precopy running for seconds
POSTCOPY_LINK_MIBS = 4  # postcopy bandwidth cap: pages are still being pulled when the fault lands
FILL_MIB = 48
SHORT_CUT_S = 2.0  # far below what the shrunk TCP retries tolerate (~12.6 s): the stream rides it out


@dataclass(frozen=True)
class FaultScenario:
    id: str
    point: str  # lab.migration.fault_run.POINTS
    fault: str  # runner.INJECT
    expect: str  # source | destination | answer | lost
    documented: str
    mode: str = "precopy"
    hold_switchover: bool = False  # keep the source's switchover pause open (runner.hold_switchover)
    smoke: bool = False


SCENARIOS = [
    FaultScenario(
        "precopy-dst-qemu-killed", "precopy", "kill-dst-qemu", "source",
        "The destination QEMU dies mid-stream: the source's write fails, libvirt fails the job and the "
        "guest keeps running on the source; the destination's domain is gone.", smoke=True),
    FaultScenario(
        "switchover-dst-qemu-killed", "switchover", "kill-dst-qemu", "source",
        "The source is paused for the switchover, QEMU's stream is complete, Finish on the destination "
        "fails because its QEMU is gone: libvirt's Confirm resumes the guest on the source.",
        hold_switchover=True),
    FaultScenario(
        "precopy-dst-libvirtd-killed-p2p", "precopy", "kill-dst-libvirtd", "source",
        "The p2p connection to the destination closes: the source cancels the migration and keeps the "
        "guest; the restarted destination libvirtd finds the incoming job unfinished and removes the domain."),
    FaultScenario(
        "precopy-src-libvirtd-killed-restarted", "precopy", "kill-src-libvirtd", "source",
        "The client's call fails with the connection; on restart libvirt recovers the outgoing job: an "
        "unfinished precopy migration is cancelled and the guest resumed on the source; the destination, "
        "its client gone, removes the incoming domain."),
    FaultScenario(
        "precopy-network-cut-held", "precopy", "cut-migration", "source",
        "The migration connection is cut both ways and held: the source's TCP gives up (tcp_retries2, "
        "shrunk to ~12.6 s), QEMU fails the stream, libvirt fails the job and keeps the guest on the source."),
    FaultScenario(
        "precopy-network-cut-heals", "precopy", "cut-migration-short", "destination",
        f"A {SHORT_CUT_S:g} s cut is a pause to TCP, whose retransmissions outlast it: the migration "
        "completes and the guest runs on the destination."),
    FaultScenario(
        "precopy-libvirt-port-cut", "precopy", "cut-libvirt", "source",
        "The p2p control connection (qemu+ssh) is cut: keepalive and TCP retries close it, the source "
        "reports the lost connection, cancels (or, past QEMU's completion, fails Finish and resumes) and "
        "keeps the guest; the destination drops the incoming domain when its client goes."),
    FaultScenario(
        "dst-out-of-memory", "start", "dst-oom", "source",
        "The destination cannot give the guest its RAM (its libvirtd's data limit, inherited by the QEMU "
        "it starts): that QEMU exits while starting, Prepare fails, nothing runs there, the guest stays."),
    FaultScenario(
        "precopy-abort-job", "precopy", "abort", "source",
        "virDomainAbortJob during precopy cancels the migration: 'canceled by client', the guest keeps "
        "running on the source, the destination's domain is removed.", smoke=True),
    FaultScenario(
        "switchover-abort-job", "switchover", "abort", "answer",
        "virDomainAbortJob while the source is paused for the switchover: libvirt aborts 'at the soonest "
        "opportunity'. While QEMU still streams (pre-switchover, device state) it cancels: 'canceled by client', "
        "the source resumes the guest, the destination's domain is removed. Once QEMU has completed the stream "
        "the abort is too late: QEMU has nothing to cancel, libvirt's Finish completes the migration and the "
        "call succeeds. Either way the guest runs on exactly the host libvirt's answer names.",
        hold_switchover=True),
    FaultScenario(
        "postcopy-network-cut-resumed", "postcopy", "cut-migration", "destination",
        "The migration connection is cut after the switch and held: the source's TCP gives up (tcp_retries2, "
        "~12.6 s) and its QEMU pauses the postcopy migration (it cannot be cancelled: neither side has the whole "
        "guest). The destination notices by itself only if it had something unacknowledged to send (a page "
        "request): QEMU up to 10.0 sets no keepalive on the migration socket. If it has not within 10 s, the "
        "network is healed and the destination's kernel ends the dead connection, as keepalive would (libvirt 9.0 "
        "offers nothing there: abortJob and monitor commands wait for the incoming job). libvirt then reports "
        "the postcopy failed on both "
        "hosts, and VIR_MIGRATE_POSTCOPY_RESUME completes it on the destination.", mode="postcopy"),
    FaultScenario(
        "postcopy-abort-job-resumed", "postcopy", "abort-postcopy", "destination",
        "virDomainAbortJob with VIR_DOMAIN_ABORT_JOB_POSTCOPY pauses a postcopy migration (it cannot be "
        "cancelled); VIR_MIGRATE_POSTCOPY_RESUME then completes it on the destination.", mode="postcopy"),
    FaultScenario(
        "postcopy-dst-qemu-killed-guest-lost", "postcopy", "kill-dst-qemu", "lost",
        "After the switch the guest's newest state is only on the destination: its QEMU killed, the guest "
        "is lost by design. The source stays paused (post-copy failed) and must not resume; the destination "
        "has no running domain; the migration call reports failure.", mode="postcopy"),
]

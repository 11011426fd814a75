"""One fault scenario end to end: fingerprint the guest, migrate with the fault at its point, let the
harness do what an operator would (heal a cut, restart a daemon, resume a postcopy), then check the
documented outcome and a second migration. Every problem is a Finding; the verdict is judged after."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import libvirt

from lab.errors import LabError
from lab.guest.domain import Guest
from lab.migration.fault_run import (
    POSTCOPY_FAILED, FaultParams, FaultRun, domain_state, migrate_with_fault, migration_settings,
    resume_postcopy,
    settings_changed, wait_postcopy_failed, wait_recovered,
)
from lab.migration.integrity import Fingerprint, inspect, qemu_ended, take_fingerprint
from lab.migration.live import migrate
from lab.results.verdicts import Finding, Kind
from lab.runtime.faults import FAST_TCP, LIBVIRT_PORTS, MIGRATION_PORTS, FaultInjector
from lab.runtime.hosts import Host, close_connection
from suites.faults.scenarios import FILL_MIB, LINK_MIBS, POSTCOPY_LINK_MIBS, SHORT_CUT_S, FaultScenario

RESUME_TIMEOUT_S = 300  # the rest of the guest's memory at 4 MiB/s under TCG, with room
UNNOTICED_S = 10.0  # a postcopy cut: how long the destination may lag behind the source in noticing it
RECOVERY_TIMEOUT_S = 180  # TCG on a shared two-core runner: a restarted libvirtd re-probes, guests crawl
OOM_HEADROOM = 64 * 2**20  # the destination libvirtd itself may grow this much under the limit
STATE_NAMES = {None: "no domain", libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
               libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed"}


def state_text(state: tuple[int | None, int | None]) -> str:
    return f"{STATE_NAMES.get(state[0], state[0])}" + (f" (reason {state[1]})" if state[0] is not None else "")


@dataclass
class FaultOutcome:
    scenario: FaultScenario
    run: FaultRun | None = None
    findings: list[Finding] = field(default_factory=list)
    ended_on: str = ""  # the host the guest runs on after recovery, or "" (lost)
    resume_stuck: bool = False  # the postcopy resume never returned (the daemons were restarted)
    expected: str = ""  # where it had to end: the scenario's expect, or libvirt's answer's for "answer"
    states: dict = field(default_factory=dict)  # host -> libvirt's state of the domain after the fault
    settings_changed: list[str] = field(default_factory=list)
    second_migration: dict = field(default_factory=dict)
    oracle: dict | None = None

    def record(self) -> dict:
        s = self.scenario
        return {"kind": "fault", "scenario": s.id, "point": s.point, "fault": s.fault, "mode": s.mode,
                "expected": self.expected or s.expect, "documented": s.documented, "ended_on": self.ended_on,
                "domain_states": self.states, "migration_settings_changed": self.settings_changed,
                "second_migration": self.second_migration, "oracle": self.oracle,
                "detection_s": self.run.detection_s if self.run else None,
                "recovery_s": self.run.recovery_s if self.run else None,
                "error": self.run.result.error if self.run and self.run.result else None,
                "job_final_stats": self.run.result.stats if self.run and self.run.result else None,
                "fault_run": self.run.as_record() if self.run else None,
                "findings": [{"kind": f.kind.value, "text": f.text} for f in self.findings]}


def scenario_params(lab, scenario: FaultScenario, dst: Host) -> FaultParams:
    postcopy = scenario.mode == "postcopy"
    return FaultParams(bandwidth_mibs=LINK_MIBS, migrate_uri=f"tcp://{dst.address}", unsafe=lab.needs_unsafe("shared"),
                       mode=scenario.mode, postcopy_after_iterations=1, postcopy_after_s=1.0,
                       postcopy_bandwidth_mibs=POSTCOPY_LINK_MIBS if postcopy else 0, timeout_s=240)


class FaultCase:
    """The scenario on (src, dst) with the lab's fault injector; `sabotage` breaks the outcome on purpose
    (the split-brain test), after the fault and before the checks."""

    def __init__(self, lab, faults: FaultInjector, scenario: FaultScenario, guest: Guest, sabotage=None):
        self.lab, self.faults, self.scenario, self.guest, self.sabotage = lab, faults, scenario, guest, sabotage
        self.src, self.dst = lab.hosts[0], lab.hosts[1]
        self.params = scenario_params(lab, scenario, self.dst)
        self.cuts: list = []
        self.thaw: list[tuple[str, str]] = []
        self.restart: list[tuple[str, str]] = []
        self.lifted: list[str] = []
        self.undo_failures: list[str] = []
        self.side_steps: list[str] = []  # what a helper thread did while the migration call was blocked
        self.abort_conn = self.src.connect(fresh=True)  # migrateToURI3's connection is blocked meanwhile

    # -- the faults ------------------------------------------------------------
    def inject(self) -> str:
        f, name, src, dst = self.scenario.fault, self.guest.name, self.src, self.dst
        if f == "kill-dst-qemu":
            done = f"SIGKILL to the destination QEMU, PID {self.faults.kill_qemu(dst.name, name)} from {dst.name}'s pid file"
        elif f in ("kill-dst-libvirtd", "kill-src-libvirtd"):
            host = dst if f == "kill-dst-libvirtd" else src
            done = f"SIGKILL to {host.name}'s libvirtd, PID {self.faults.kill_daemon(host.name, 'libvirtd')}"
            self.restart.append((host.name, "libvirtd"))
        elif f in ("cut-migration", "cut-migration-short", "cut-libvirt"):
            cut = self.faults.cut(dst.name, src.address, LIBVIRT_PORTS if f == "cut-libvirt" else MIGRATION_PORTS)
            self.cuts.append(cut)
            done = cut.describe()
            if f == "cut-migration-short":
                threading.Timer(SHORT_CUT_S, self.faults.heal, (cut,)).start()
                done += f", healed after {SHORT_CUT_S:g} s"
            elif self.scenario.mode == "postcopy":
                threading.Thread(target=self._unstick_destination, args=(cut,), daemon=True).start()
        elif f == "dst-oom":
            # What the same QEMU needs on the source, less half the guest's RAM: everything else fits
            # (the TCG buffer is mapped first), the RAM does not.
            needs = self.faults.data_bytes(src.name, domain=name)
            limit = max(self.faults.data_bytes(dst.name, "libvirtd") + OOM_HEADROOM,
                        needs - self.guest.config.memory_mib * 2**20 // 2)
            self.faults.limit_memory(dst.name, "libvirtd", limit)
            self.lifted.append(dst.name)
            done = (f"{dst.name}'s libvirtd limited to {limit / 2**20:.0f} MiB of data (RLIMIT_DATA, inherited by the "
                    f"QEMU it starts; the guest's QEMU uses {needs / 2**20:.0f} MiB on {src.name})")
        elif f in ("abort", "abort-postcopy"):
            dom = self.abort_conn.lookupByName(name)
            flags = libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY if f == "abort-postcopy" else 0
            try:
                dom.abortJobFlags(flags)
                done = f"virDomainAbortJobFlags({flags}) accepted"
            except libvirt.libvirtError as exc:
                done = f"virDomainAbortJobFlags({flags}) refused: {exc.get_error_message()}"
        else:
            raise LabError(f"{f}: unknown fault")
        for host, daemon in self.thaw:  # the held switchover pause ends once the fault is in
            self.faults.thaw_daemon(host, daemon)
        self.thaw.clear()
        return done

    def _unstick_destination(self, cut) -> None:
        """A postcopy cut: the source's TCP gives up and its QEMU pauses, but a destination with nothing unacked
        to send (no page request outstanding; QEMU <= 10.0 sets no keepalive on the migration socket) may never
        notice, and its libvirt's Finish waits for it. libvirt 9.0 offers nothing there meanwhile: abortJob and
        monitor commands on the destination wait for the incoming job (docs/faults.md). So once the source reports
        the failure and the destination has not for UNNOTICED_S, the network is healed and the destination's
        kernel ends the dead connection, as TCP keepalive would have (ss -K in its namespace)."""
        name, deadline = self.guest.name, time.monotonic() + 120
        failed_at = None
        while time.monotonic() < deadline:
            src_state, dst_state = domain_state(self.src, name), domain_state(self.dst, name)
            if dst_state in POSTCOPY_FAILED or dst_state[0] is None:
                self.side_steps.append(f"{self.dst.name} reported the postcopy failure by itself ({state_text(dst_state)})")
                return
            if src_state in POSTCOPY_FAILED:
                failed_at = failed_at or time.monotonic()
                if time.monotonic() - failed_at >= UNNOTICED_S:
                    self.faults.heal(cut)
                    self.side_steps.append(f"{self.src.name} failed, {self.dst.name} still {state_text(dst_state)} "
                                           f"after {UNNOTICED_S:g} s: network healed")
                    ended = self.faults.end_connections(self.dst.name, self.src.address, MIGRATION_PORTS)
                    self.side_steps.append(f"{self.dst.name}: {ended} migration connection(s) from {self.src.address} "
                                           "ended by its kernel (ss -K)")
                    return
            time.sleep(0.2)

    def hold_switchover(self) -> None:
        """Stop the destination libvirtd (SIGSTOP by PID) while precopy runs: the source then stays paused
        for the switchover, waiting for Finish, until the fault is in. Without the hold the pause lasts
        ~100 ms under TCG and the event reaches the runner after it, at random."""
        self.faults.freeze_daemon(self.dst.name, "libvirtd")
        self.thaw.append((self.dst.name, "libvirtd"))

    def undo(self) -> list[str]:
        """Put the lab back the way an operator would; returns what was done (a step that failed says so,
        and the others still run). Safe to call twice."""
        steps = []

        def step(what: str, action) -> None:
            try:
                done = action()
                steps.append(what + (f", PID {done}" if isinstance(done, int) else ""))
            except LabError as exc:
                steps.append(f"FAILED {what}: {exc}")
                self.undo_failures.append(f"{what}: {exc}")

        for host, daemon in self.thaw:
            step(f"SIGCONT {host} {daemon}", lambda h=host, d=daemon: self.faults.thaw_daemon(h, d))
        for cut in self.cuts:
            step(f"healed: {cut.describe()}", lambda c=cut: self.faults.heal(c))
        for host in self.lifted:
            step(f"{host}: libvirtd data limit lifted", lambda h=host: self.faults.limit_memory(h, "libvirtd", None))
        for host, daemon in self.restart:
            step(f"{host}: {daemon} restarted", lambda h=host, d=daemon: self.faults.restart_daemon(h, d))
        self.thaw, self.cuts, self.lifted, self.restart = [], [], [], []
        return steps

    # -- the scenario ------------------------------------------------------------
    def run(self) -> FaultOutcome:
        s, guest, src, dst = self.scenario, self.guest, self.src, self.dst
        out = FaultOutcome(s)
        before = take_fingerprint(guest, fill_mib=FILL_MIB)
        settings_before = migration_settings(src, guest.name)
        tcp_before = {h.name: self.faults.set_tcp(h.name, FAST_TCP) for h in (src, dst)}
        try:
            out.run = run = migrate_with_fault(guest, src, dst, self.params, s.point, self.inject,
                                               before_point=self.hold_switchover if s.hold_switchover else None)
            run.steps += self.side_steps + self.undo()
            if not run.call_returned:
                out.findings.append(Finding(Kind.MIGRATION_FAILED, f"{s.id}: {run.result.error}; domain states "
                                            f"{ {h.name: state_text(domain_state(h, guest.name)) for h in (src, dst)} }"))
                # Both libvirtds keep the stuck migration's threads and job: restart them (libvirt recovers
                # its jobs on start), or the guest cannot even be removed and the next test inherits it.
                for host in (src, dst):
                    self.faults.kill_daemon(host.name, "libvirtd")
                    self.restart.append((host.name, "libvirtd"))
                run.steps += self.undo()
                return out
            if not run.point_reached:
                out.findings.append(Finding(Kind.MIGRATION_FAILED, f"{s.id}: the injection point ({s.point}) was never "
                                            f"reached: the migration ended first ({run.result.error or 'it completed'})"))
                return out
            if s.mode == "postcopy" and s.expect == "destination":
                self._resume(run, out)
                if out.resume_stuck:
                    return out
            if self.sabotage:
                self.sabotage(self)
            if s.expect == "lost":
                self._check_lost(run, out)
            else:
                self._check_one_host(run, out, before, settings_before)
        finally:
            self.undo()
            for host, previous in tcp_before.items():
                self.faults.set_tcp(host, previous)
            close_connection(self.abort_conn)
            out.findings += [Finding(Kind.INVARIANT, f"the harness could not undo its fault: {u}")
                             for u in self.undo_failures]
        if s.expect != "lost" and out.ended_on and not any(f.kind == Kind.SPLIT_BRAIN for f in out.findings):
            self._second_migration(out, before)
        return out

    def _resume(self, run: FaultRun, out: FaultOutcome) -> None:
        """Recover a paused postcopy migration; the time to recovery runs until the guest runs again."""
        # Both libvirts must report the failed postcopy (the source's Perform and the destination's Finish
        # have ended); a resume asked for earlier is refused ("being actively monitored by another thread").
        states = wait_postcopy_failed(self.guest, self.src, self.dst)
        said = {h: state_text(st) for h, st in states.items()}
        run.steps.append(f"before resume: {said}")
        if not all(st in POSTCOPY_FAILED for st in states.values()):
            out.findings.append(Finding(Kind.MIGRATION_FAILED, "the postcopy failure is not reported on both hosts "
                                                               f"(paused/running, post-copy failed): {said}"))
        error = ""
        for attempt in range(1, 4):  # the destination may still be tearing down its broken stream
            box: dict = {}
            worker = threading.Thread(target=lambda: box.update(error=resume_postcopy(
                self.guest, self.src, self.dst, self.params)), daemon=True)
            worker.start()
            worker.join(RESUME_TIMEOUT_S)
            if worker.is_alive():  # e.g. the destination QEMU's main thread in a page fault: its monitor is dead
                error = (f"the resume did not return within {RESUME_TIMEOUT_S} s; domain states "
                         f"{ {h.name: state_text(domain_state(h, self.guest.name)) for h in (self.src, self.dst)} }")
                run.steps.append(f"postcopy resume {attempt}: {error}")
                for host in (self.src, self.dst):  # libvirt recovers its jobs on start; the guest can then go
                    self.faults.kill_daemon(host.name, "libvirtd")
                    self.restart.append((host.name, "libvirtd"))
                run.steps += self.undo()
                out.resume_stuck = True
                break
            error = box.get("error", "")
            run.steps.append(f"postcopy resume {attempt}: {error or 'completed'}")
            if not error:
                break
            time.sleep(2)
        if error:
            out.findings.append(Finding(Kind.MIGRATION_FAILED, f"postcopy recovery failed: {error}"))

    def _check_one_host(self, run: FaultRun, out: FaultOutcome, before: Fingerprint, settings_before: dict) -> None:
        s, guest, hosts = self.scenario, self.guest, self.lab.hosts
        result = run.result
        # "answer": libvirt's answer decides (an abort that came after QEMU completed the stream is too late:
        # libvirt's Finish completes the migration, and the call says so).
        expect = s.expect if s.expect != "answer" else ("destination" if result.ok else "source")
        out.expected = expect
        expected = self.src if expect == "source" else self.dst
        if expect == "source" and result.ok:
            out.findings.append(Finding(Kind.INVARIANT, f"{s.id}: libvirt reported success for a migration that "
                                                        "must have failed"))
        if expect == "destination" and s.mode == "precopy" and not result.ok:
            out.findings.append(Finding(Kind.MIGRATION_FAILED, f"{s.id}: the migration failed: {result.error}"))
        where = wait_recovered(run, guest, hosts, RECOVERY_TIMEOUT_S)
        out.states = {h.name: state_text(domain_state(h, guest.name)) for h in hosts}
        if where is None:
            out.findings.append(Finding(Kind.HEARTBEAT_LOST, f"{s.id}: within {RECOVERY_TIMEOUT_S} s the guest did not "
                                                             f"run on exactly one host with heartbeats ({out.states})"))
        out.ended_on = where.name if where else ""
        running = [h.name for h in hosts if domain_state(h, guest.name)[0] == libvirt.VIR_DOMAIN_RUNNING]
        if len(running) > 1:
            # Two copies share the guest's address: which one answers the agent is chance, so its checks would
            # say something different each run. The split brain below is the finding.
            run.steps.append(f"integrity not checked: the guest runs on {' and '.join(running)}")
        else:
            try:
                after = inspect(guest, before, hosts, expected)
            except LabError as exc:
                out.findings.append(Finding(Kind.INVARIANT, f"{s.id}: the guest's integrity checks could not run: {exc}"))
            else:
                out.findings += after.findings
                out.oracle = after.oracle
        failing = self.dst if expect == "source" else self.src
        state = domain_state(failing, guest.name)
        if state[0] not in (None, libvirt.VIR_DOMAIN_SHUTOFF):
            out.findings.append(Finding(Kind.SPLIT_BRAIN if state[0] == libvirt.VIR_DOMAIN_RUNNING else Kind.INVARIANT,
                                        f"{s.id}: {failing.name} still has the domain, {state_text(state)}"))
        if expect == "source" and where is not None and where.name == self.src.name:
            state = domain_state(self.src, guest.name)
            if state[0] != libvirt.VIR_DOMAIN_RUNNING:  # it ran there with heartbeats a moment ago
                if not any(f.kind == Kind.QEMU_ENDED for f in out.findings):
                    out.findings.append(qemu_ended(guest, self.src) or Finding(
                        Kind.INVARIANT, f"{s.id}: the guest recovered on {self.src.name}, then stopped running "
                                        f"there ({state_text(state)})"))
                return
            try:
                out.settings_changed = settings_changed(settings_before, migration_settings(self.src, guest.name))
            except libvirt.libvirtError as exc:
                out.findings.append(Finding(Kind.NOT_MEASURED, f"the source QEMU's migration settings could not be "
                                                               f"read after the fault: {exc}"))
                return
            if out.settings_changed:
                out.findings.append(Finding(Kind.INVARIANT, "the source QEMU's migration settings were not put back: "
                                                            + "; ".join(out.settings_changed)))

    def _check_lost(self, run: FaultRun, out: FaultOutcome) -> None:
        guest, src, dst = self.guest, self.src, self.dst
        if run.result.ok:
            out.findings.append(Finding(Kind.INVARIANT, "libvirt reported success for a postcopy migration whose "
                                                        "destination QEMU was killed"))
        time.sleep(1.0)  # long enough for a wrongly resumed source to send heartbeats
        src_state, dst_state = domain_state(src, guest.name), domain_state(dst, guest.name)
        out.states = {src.name: state_text(src_state), dst.name: state_text(dst_state)}
        if src_state != (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED):
            out.findings.append(Finding(Kind.INVARIANT, f"the source must report the guest lost (paused, post-copy "
                                                        f"failed); it is {state_text(src_state)}"))
        if dst_state[0] == libvirt.VIR_DOMAIN_RUNNING or dst_state[0] == libvirt.VIR_DOMAIN_PAUSED:
            out.findings.append(Finding(Kind.INVARIANT, f"the destination still reports the domain "
                                                        f"{state_text(dst_state)} after its QEMU was killed"))
        since = run.detected_ns + int(0.5e9)
        if guest.heartbeats.count_since(since):
            out.findings.append(Finding(Kind.SPLIT_BRAIN, f"{guest.heartbeats.count_since(since)} heartbeats arrived "
                                                          "after the loss was reported: a copy of the guest still runs"))

    def _second_migration(self, out: FaultOutcome, before: Fingerprint) -> None:
        """The same guest migrated again from where it is now, plainly: it must arrive whole."""
        here = self.lab.host(out.ended_on)
        there = self.lab.other(here)
        params = FaultParams(migrate_uri=f"tcp://{there.address}", unsafe=self.lab.needs_unsafe("shared"),
                             timeout_s=240)
        result = migrate(self.guest.name, here, there, params)
        out.second_migration = {"src": here.name, "dst": there.name, "ok": result.ok, "error": result.error,
                                "wall_s": round(result.wall_s, 2)}
        if not result.ok:
            out.findings.append(Finding(Kind.MIGRATION_FAILED, f"the second migration {here.name} -> {there.name} "
                                                               f"failed: {result.error}; {here.name}'s QEMU log ends: "
                                                               f"{qemu_log_tail(here, self.guest.name)}"))
            return
        self.guest.host = there
        out.findings += [Finding(f.kind, f"after the second migration: {f.text}")
                         for f in inspect(self.guest, before, self.lab.hosts, there).findings]


def qemu_log_tail(host: Host, name: str, lines: int = 2) -> str:
    try:
        proc = host.run(f"tail -n {lines} /var/log/libvirt/qemu/{name}.log", check=False, timeout=20)
    except LabError as exc:
        return f"(unreadable: {exc})"
    return " | ".join(line.strip() for line in proc.stdout.splitlines()) or "(empty)"


def copy_guest_onto(case: FaultCase, host: Host) -> None:
    """Sabotage for the break-on-purpose test: a second copy of the guest started on `host` (same name
    and config, no disk), i.e. the split brain the checks must see."""
    xml = case.guest.domain(case.guest.host).XMLDesc(0)
    start, end = xml.find("<disk"), xml.find("</disk>")
    if start >= 0:
        xml = xml[:start] + xml[end + len("</disk>"):]
    host.connect().createXML(xml, 0)

"""A migration with a fault injected at a defined point, timed from the fault to its detection and
to the guest's recovery.

The point comes from libvirt itself, never from a sleep: the source job's stats (precopy under
way) or the source domain's lifecycle events (paused for the switchover, switched to postcopy).
Detection is the moment libvirt's migration call on the source returns; recovery the first moment
after it that the guest runs on exactly one host and its heartbeats arrive again.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import libvirt
import libvirt_qemu

from lab.errors import MigrationError
from lab.guest.domain import Guest
from lab.migration.live import MigrationParams, MigrationResult, migrate
from lab.runtime.hosts import Host, close_connection

MIB = 2**20
# "Precopy under way": the first iteration is running and has sent this much, with as much left.
PRECOPY_SENT_BYTES = 8 * MIB
PRECOPY_LEFT_BYTES = 8 * MIB
RECOVERED_HEARTBEATS = 5  # heartbeats after detection that show the guest runs again
# The guest runs on the destination: heartbeats sent after its resumed/post-copy event. QEMU emits its
# RESUME event before `cont` has finished starting the devices, which touch guest pages still on the
# source; a postcopy broken inside that window leaves the destination's main thread in a page fault
# that nothing will serve, and libvirt's Finish waits on `cont` forever (seen on QEMU 7.2, docs/faults.md).
POSTCOPY_RUNNING_HEARTBEATS = 3
SPLIT_BRAIN_WAIT_S = 10.0  # running on two hosts this long: recovery is not coming


@dataclass(frozen=True)
class FaultParams(MigrationParams):
    """MigrationParams plus the postcopy bandwidth (a postcopy phase long enough to cut into)."""
    postcopy_bandwidth_mibs: int = 0

    def typed_params(self) -> dict:
        params = super().typed_params()
        if self.postcopy_bandwidth_mibs:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = self.postcopy_bandwidth_mibs
        return params


class SourceWatch:
    """The source domain's job stats and lifecycle events, and the destination's lifecycle events for
    the domain, each on a connection of its own."""

    def __init__(self, src: Host, dst: Host, name: str):
        self.name, self.src_name = name, src.name  # set before any callback can run
        self.conn = src.connect(fresh=True)
        self.dom = self.conn.lookupByName(name)
        self.events: list[dict] = []
        self.seen = {"switchover": threading.Event(), "postcopy-running": threading.Event(),
                     "postcopy-failed": threading.Event()}
        self._ids = [(self.conn, self.conn.domainEventRegisterAny(
            self.dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, src.name))]
        # The destination's domain does not exist yet: listen to all of its domains, keep this one's.
        self.dst_conn = dst.connect(fresh=True)
        self._ids.append((self.dst_conn, self.dst_conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, dst.name)))

    def _event(self, _conn, dom, event: int, detail: int, host: str) -> None:
        if dom.name() != self.name:
            return
        self.events.append({"ns": time.time_ns(), "host": host, "event": event, "detail": detail})
        on_source = host == self.src_name
        if on_source and event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
            if detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED:
                self.seen["switchover"].set()
            elif detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED:
                self.seen["postcopy-failed"].set()
        if not on_source and event == libvirt.VIR_DOMAIN_EVENT_RESUMED \
                and detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY:
            self.seen["postcopy-running"].set()

    def stats(self) -> dict:
        try:
            return dict(self.dom.jobStats())
        except libvirt.libvirtError:
            return {}

    def close(self) -> None:
        for conn, event_id in self._ids:
            close_connection(conn, lambda c=conn, e=event_id: c.domainEventDeregisterAny(e))


def precopy_under_way(stats: dict) -> bool:
    return (stats.get("memory_iteration", 0) >= 1 and stats.get("memory_processed", 0) >= PRECOPY_SENT_BYTES
            and stats.get("memory_remaining", 0) >= PRECOPY_LEFT_BYTES)


POINTS = {
    "start": "before the migration starts",
    "precopy": f"precopy under way: source job stats memory_iteration >= 1, >= {PRECOPY_SENT_BYTES // MIB} MiB sent "
               f"and >= {PRECOPY_LEFT_BYTES // MIB} MiB left",
    "switchover": "switchover pause: the source's lifecycle event suspended/migrated",
    # QEMU can recover a postcopy migration only once the destination runs the guest (its incoming
    # postcopy state RUNNING): a break while it still loads the device state ends the destination.
    "postcopy": "postcopy: the destination's lifecycle event resumed/post-copy and then "
                f"{POSTCOPY_RUNNING_HEARTBEATS} heartbeats of the guest running there, "
                f"with >= {PRECOPY_LEFT_BYTES // MIB} MiB left to pull",
}


@dataclass
class FaultRun:
    point: str
    result: MigrationResult | None = None
    point_reached: bool = False
    stats_at_fault: dict = field(default_factory=dict)
    fault_ns: int = 0
    detected_ns: int = 0
    recovered_ns: int = 0
    injected: str = ""  # what was done, in words
    events: list[dict] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # what the harness did after the fault, in order
    call_returned: bool = True  # False: libvirt's migration call was still blocked at the detection timeout

    @property
    def detection_s(self) -> float | None:
        return round((self.detected_ns - self.fault_ns) / 1e9, 3) if self.detected_ns and self.fault_ns else None

    @property
    def recovery_s(self) -> float | None:
        return round((self.recovered_ns - self.fault_ns) / 1e9, 3) if self.recovered_ns and self.fault_ns else None

    def as_record(self) -> dict:
        return {"point": self.point, "point_means": POINTS[self.point], "point_reached": self.point_reached,
                "injected": self.injected, "stats_at_fault": self.stats_at_fault,
                "fault_ns": self.fault_ns, "detected_ns": self.detected_ns, "recovered_ns": self.recovered_ns,
                "detection_s": self.detection_s, "recovery_s": self.recovery_s,
                "result": self.result.as_record() if self.result else None, "source_events": self.events,
                "steps": self.steps, "call_returned": self.call_returned}


def _postcopy_running(watch: SourceWatch, guest: Guest) -> bool:
    """The destination's resumed/post-copy event came and the guest's heartbeats arrive after it."""
    resumed = [e["ns"] for e in watch.events if e["host"] != watch.src_name and e["event"] == libvirt.VIR_DOMAIN_EVENT_RESUMED
               and e["detail"] == libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY]
    return bool(resumed) and guest.heartbeats.count_since(resumed[0]) >= POSTCOPY_RUNNING_HEARTBEATS


def _wait_point(point: str, watch: SourceWatch, done: threading.Event, timeout: float,
                guest: Guest | None = None) -> dict | None:
    """Job stats when the point is reached; None when the migration ended (or time ran out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done.is_set():
        if point == "switchover" and watch.seen["switchover"].is_set():
            return watch.stats() or {"note": "no job stats"}
        if point in ("precopy", "postcopy"):
            stats = watch.stats()
            if point == "precopy" and precopy_under_way(stats):
                return stats
            if (point == "postcopy" and watch.seen["postcopy-running"].is_set() and _postcopy_running(watch, guest)
                    and stats.get("memory_remaining", 0) >= PRECOPY_LEFT_BYTES):
                return stats
        time.sleep(0.02 if point != "switchover" else 0.005)
    return None


def migrate_with_fault(guest: Guest, src: Host, dst: Host, params: MigrationParams, point: str,
                       inject: Callable[[], str], *, before_point: Callable[[], None] | None = None,
                       point_timeout: float = 120.0, detect_timeout: float = 150.0) -> FaultRun:
    """Migrate `guest` src -> dst, run `inject` at `point`, wait for libvirt to end the job.

    before_point: run once precopy is under way, ahead of a later point (e.g. what holds the switchover
    pause open). A call still blocked after detect_timeout is recorded (run.call_returned False), not raised."""
    if point not in POINTS:
        raise MigrationError(f"{point!r}: not an injection point ({', '.join(POINTS)})")
    run = FaultRun(point)
    started_ns, began = time.time_ns(), time.monotonic()
    watch = SourceWatch(src, dst, guest.name)
    done = threading.Event()
    box: dict = {}

    def call() -> None:
        try:
            box["result"] = migrate(guest.name, src, dst, params)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            box["error"] = exc
        finally:
            box["ended_ns"] = time.time_ns()
            done.set()

    try:
        if point == "start":
            run.fault_ns, run.injected, run.point_reached = time.time_ns(), inject(), True
        worker = threading.Thread(target=call, name=f"migrate-{guest.name}", daemon=True)
        worker.start()
        if point != "start":
            if before_point:
                if _wait_point("precopy", watch, done, point_timeout) is None:
                    run.steps.append("precopy ended before the hold could be set")
                else:
                    before_point()
            stats = _wait_point(point, watch, done, point_timeout, guest)
            if stats is not None:
                run.fault_ns = time.time_ns()
                run.injected, run.point_reached, run.stats_at_fault = inject(), True, stats
        if done.wait(detect_timeout):
            if "error" in box:
                raise box["error"]
            run.result, run.detected_ns = box["result"], box["ended_ns"] if run.fault_ns else 0
        else:  # a finding, not an error: the guest's state is still checked and recorded
            run.call_returned = False
            run.result = MigrationResult(src.name, dst.name, params, started_ns, time.time_ns(),
                                         time.monotonic() - began, error=(
                                             f"libvirt's migration call did not return within {detect_timeout:.0f} s "
                                             f"of the fault ({run.injected or 'none injected'})"))
            run.detected_ns = 0
        failed = [e["ns"] for e in watch.events if e["host"] == src.name and e["event"] == libvirt.VIR_DOMAIN_EVENT_SUSPENDED
                  and e["detail"] == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED and e["ns"] >= run.fault_ns]
        if run.fault_ns and failed:  # the source's event may come before the call returns
            run.detected_ns = min(run.detected_ns or failed[0], failed[0])
    finally:
        run.events = list(watch.events)
        watch.close()
    return run


def wait_recovered(run: FaultRun, guest: Guest, hosts: tuple[Host, ...], timeout: float) -> Host | None:
    """The host the guest runs on once it is running on exactly one host and heartbeats arrive after
    detection; run.recovered_ns is stamped then. None if that does not happen within timeout."""
    since = run.detected_ns or time.time_ns()
    deadline = time.monotonic() + timeout
    both_since = None  # a guest running on two hosts does not stop by itself: no use waiting long
    while time.monotonic() < deadline:
        running = [h for h in hosts if domain_state(h, guest.name)[0] == libvirt.VIR_DOMAIN_RUNNING]
        if len(running) == 1 and guest.heartbeats.count_since(since) >= RECOVERED_HEARTBEATS:
            run.recovered_ns = time.time_ns()
            guest.host = running[0]
            return running[0]
        both_since = (both_since or time.monotonic()) if len(running) > 1 else None
        if both_since and time.monotonic() - both_since > SPLIT_BRAIN_WAIT_S:
            return None
        time.sleep(0.02)
    return None


def domain_state(host: Host, name: str) -> tuple[int | None, int | None]:
    """libvirt's (state, reason) of the domain on host; (None, None) when the host has no such domain."""
    try:
        state, reason = host.connect().lookupByName(name).state()
        return state, reason
    except libvirt.libvirtError:
        return None, None


POSTCOPY_FAILED = {(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED),
                   (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED)}


def wait_postcopy_failed(guest: Guest, src: Host, dst: Host, timeout: float = 30.0) -> dict[str, tuple]:
    """Wait until libvirt on both hosts says the postcopy migration failed (source paused, post-copy failed;
    destination running or paused, post-copy failed): only then can it be resumed. Returns the last states."""
    deadline = time.monotonic() + timeout
    while True:
        states = {h.name: domain_state(h, guest.name) for h in (src, dst)}
        if all(state in POSTCOPY_FAILED for state in states.values()) or time.monotonic() >= deadline:
            return states
        time.sleep(0.1)


def resume_postcopy(guest: Guest, src: Host, dst: Host, params: MigrationParams) -> str:
    """Recover a paused postcopy migration (VIR_MIGRATE_POSTCOPY_RESUME, libvirt >= 8.5): "" or libvirt's error."""
    flags = replace(params, mode="postcopy").flags() | libvirt.VIR_MIGRATE_POSTCOPY_RESUME
    try:
        src.connect().lookupByName(guest.name).migrateToURI3(dst.libvirt_uri, params.typed_params(), flags)
        return ""
    except libvirt.libvirtError as exc:
        return exc.get_error_message()


def migration_settings(host: Host, name: str) -> dict:
    """The QEMU's migration parameters and capabilities as QEMU reports them (QMP, read-only queries)."""
    dom = host.connect().lookupByName(name)
    out = {}
    for what in ("query-migrate-parameters", "query-migrate-capabilities"):
        reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps({"execute": what}), 0))["return"]
        out[what] = reply
    out["query-migrate-capabilities"] = {c["capability"]: c["state"] for c in out["query-migrate-capabilities"]}
    return out


def settings_changed(before: dict, after: dict) -> list[str]:
    """Every parameter or capability whose value differs, as 'name: before -> after'."""
    changes = []
    for section in before:
        for key in sorted(set(before[section]) | set(after.get(section, {}))):
            old, new = before[section].get(key), after.get(section, {}).get(key)
            if old != new:
                changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


"""Migration driver: typed parameters in, libvirt's migrateToURI3 / migrate3 out, stats back.

No shell strings: every option is a libvirt flag or typed parameter, so a
scenario reads as data and the record says exactly what was asked.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import libvirt
import libvirt_qemu

from lab.errors import MigrationError
from lab.runtime.hosts import Host, close_connection

MODES = ("precopy", "postcopy")


@dataclass(frozen=True)
class MigrationParams:
    live: bool = True
    mode: str = "precopy"  # precopy | postcopy (switch after postcopy_after_iterations)
    p2p: bool = True
    tunnelled: bool = False
    auto_converge: bool = False
    auto_converge_initial_pct: int = 0  # 0: QEMU's default (20)
    auto_converge_increment_pct: int = 0  # 0: QEMU's default (10)
    parallel_connections: int = 0  # > 0: multifd with this many connections
    compression: str | None = None  # e.g. "xbzrle"
    copy_storage: bool = False  # copy non-shared disks (VIR_MIGRATE_NON_SHARED_DISK)
    unsafe: bool = False  # storage shared in a way libvirt cannot detect
    bandwidth_mibs: int = 0  # 0: unlimited
    max_downtime_ms: int = 0  # 0: libvirt/QEMU default (300 ms)
    migrate_uri: str | None = None  # e.g. tcp://198.18.0.12 (the lab network)
    persist_dest: bool = True
    undefine_source: bool = True
    offline: bool = False
    postcopy_after_iterations: int = 2  # switch to postcopy once precopy ran this many iterations
    postcopy_after_s: float = 5.0  # ... or after this long, whichever comes first
    timeout_s: float = 120.0  # watchdog budget
    timeout_action: str = "abort"  # abort | postcopy
    paused: bool = False  # leave the guest paused on the destination (to read its memory from outside)

    def flags(self) -> int:
        f = 0
        f |= libvirt.VIR_MIGRATE_LIVE if self.live and not self.offline else 0
        f |= libvirt.VIR_MIGRATE_OFFLINE if self.offline else 0
        f |= libvirt.VIR_MIGRATE_PEER2PEER if self.p2p or self.tunnelled else 0
        f |= libvirt.VIR_MIGRATE_TUNNELLED if self.tunnelled else 0
        f |= libvirt.VIR_MIGRATE_AUTO_CONVERGE if self.auto_converge else 0
        f |= libvirt.VIR_MIGRATE_PARALLEL if self.parallel_connections else 0
        f |= libvirt.VIR_MIGRATE_COMPRESSED if self.compression else 0
        f |= libvirt.VIR_MIGRATE_NON_SHARED_DISK if self.copy_storage else 0
        f |= libvirt.VIR_MIGRATE_UNSAFE if self.unsafe else 0
        f |= libvirt.VIR_MIGRATE_PERSIST_DEST if self.persist_dest else 0
        f |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE if self.undefine_source else 0
        f |= libvirt.VIR_MIGRATE_PAUSED if self.paused else 0
        f |= libvirt.VIR_MIGRATE_POSTCOPY if self.mode == "postcopy" or self.timeout_action == "postcopy" else 0
        return f

    def typed_params(self) -> dict:
        params: dict = {}
        if self.bandwidth_mibs:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth_mibs
        if self.migrate_uri and not self.tunnelled:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = self.migrate_uri
        if self.parallel_connections:
            params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = self.parallel_connections
        if self.compression:
            params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = self.compression
        if self.auto_converge and self.auto_converge_initial_pct:
            params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = self.auto_converge_initial_pct
        if self.auto_converge and self.auto_converge_increment_pct:
            params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = self.auto_converge_increment_pct
        return params


@dataclass
class MigrationResult:
    src: str
    dst: str
    params: MigrationParams
    started_ns: int  # realtime, for aligning with probe windows
    finished_ns: int
    wall_s: float
    stats: dict = field(default_factory=dict)  # libvirt completed-job stats from the destination
    stats_note: str = ""  # why stats (or downtime / time_elapsed in them) are missing, in libvirt's words
    switched_to_postcopy: bool = False
    watchdog_note: str = ""  # e.g. why a postcopy switch had to be retried
    throttle_max_pct: int | None = None  # auto-converge: the largest CPU throttle QEMU reported while it ran
    dirty_rate_reported_mibs: float | None = None  # the largest dirty rate QEMU reported while it ran (None: never)
    aborted: bool = False
    error: str = ""
    call_hung: bool = False  # the migration call had not returned ABORT_GRACE_S after the abort (left blocked)
    # QEMU's own STOP and MIGRATION events on the source, stamped by QEMU (`us`: its wall clock in microseconds)
    qemu_events: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    def as_record(self) -> dict:
        doc = asdict(self)
        doc["params"] = asdict(self.params)
        return doc


PROGRESS_EVERY_S = 5.0
# After the watchdog's abort, the migration call must return within this: libvirt waits for QEMU's migration
# to end, and one that never reaches "cancelled" would otherwise hold the test for ever.
ABORT_GRACE_S = 60.0


def completed_job_stats(dom: libvirt.virDomain, where: str) -> tuple[dict, str]:
    """libvirt's completed-job stats as returned, and a note when they are missing or partial (never a default)."""
    try:
        stats = dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except libvirt.libvirtError as exc:
        return {}, f"jobStats(COMPLETED) on {where} failed: {exc.get_error_message()}"
    missing = [k for k in ("downtime", "time_elapsed") if k not in stats]
    return stats, (f"jobStats(COMPLETED) on {where} has no {', '.join(missing)} (keys: {', '.join(sorted(stats))})"
                   if missing else "")


class _Watchdog:
    """Watches the source job; past the budget it aborts (or switches to postcopy) and says so."""

    def __init__(self, dom: libvirt.virDomain, params: MigrationParams, progress: Callable[[str], None] | None = None):
        self.dom, self.params, self.progress = dom, params, progress
        self.fired = ""
        self.aborted_at: float | None = None  # monotonic time of the abort
        self.postcopy_switched = False
        self.postcopy_error = ""
        self.stats_at_fire: dict = {}
        self.throttle_max: int | None = None  # auto-converge: QEMU's CPU throttle, polled (it is 0 again at the end)
        self.dirty_rate_max: float | None = None  # MiB/s, QEMU's dirty-pages-rate, polled (absent once completed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        deadline = time.monotonic() + self.params.timeout_s
        next_report = time.monotonic() + PROGRESS_EVERY_S
        while not self._stop.wait(0.1):
            if self.params.mode == "postcopy" and not self.postcopy_switched:
                self._maybe_start_postcopy()
            self._sample()
            if self.progress and time.monotonic() >= next_report:
                next_report += PROGRESS_EVERY_S
                self._report()
            if time.monotonic() < deadline:
                continue
            try:
                if self.params.timeout_action == "postcopy" and not self.postcopy_switched:
                    self.dom.migrateStartPostCopy(0)
                    self.postcopy_switched = True
                    self.fired = f"budget {self.params.timeout_s:.0f} s exceeded: switched to postcopy"
                    deadline = time.monotonic() + self.params.timeout_s
                else:
                    try:  # evidence: where the job stood when the budget ran out
                        self.stats_at_fire = dict(self.dom.jobStats())
                    except libvirt.libvirtError:
                        pass
                    self.aborted_at = time.monotonic()
                    self.dom.abortJob()
                    self.fired = f"budget {self.params.timeout_s:.0f} s exceeded: aborted"
                    return
            except libvirt.libvirtError:
                return  # the job ended on its own meanwhile

    def _sample(self) -> None:
        """The live job's figures that are gone once it completes: the throttle and the dirty rate."""
        try:
            stats = self.dom.jobStats()
        except libvirt.libvirtError:
            return
        throttle, rate = stats.get("auto_converge_throttle"), stats.get("memory_dirty_rate")
        if throttle is not None:
            self.throttle_max = max(self.throttle_max or 0, int(throttle))
        if rate is not None and stats.get("memory_iteration", 0) >= 2:  # a rate needs one whole sync period
            mibs = rate * stats.get("memory_page_size", 4096) / 2**20
            self.dirty_rate_max = max(self.dirty_rate_max or 0.0, mibs)

    def _report(self) -> None:
        """Where a long migration stands: iteration, what is left, the dirty rate (from the live job stats)."""
        try:
            s = self.dom.jobStats()
        except libvirt.libvirtError:
            return
        self.progress(f"migrating: iteration {s.get('memory_iteration', '?')}, "
                      f"{s.get('memory_remaining', 0) / 2**20:.0f} MiB of memory left, "
                      f"dirtied at {s.get('memory_dirty_rate', 0) * 4096 / 2**20:.1f} MiB/s")

    def _maybe_start_postcopy(self) -> None:
        try:
            iteration = self.dom.jobStats().get("memory_iteration", 0)
        except libvirt.libvirtError as exc:
            self.postcopy_error = f"job stats: {exc.get_error_message()}"
            iteration = 0
        late = time.monotonic() - self.started >= self.params.postcopy_after_s
        if iteration >= self.params.postcopy_after_iterations or late:
            try:
                self.dom.migrateStartPostCopy(0)
                self.postcopy_switched = True
            except libvirt.libvirtError as exc:
                self.postcopy_error = exc.get_error_message()  # retried on the next tick; kept as evidence


def migrate(name: str, src: Host, dst: Host, params: MigrationParams,
            progress: Callable[[str], None] | None = None) -> MigrationResult:
    """Migrate domain `name` from src to dst; raises MigrationError with libvirt's reason on failure.

    progress: told every PROGRESS_EVERY_S seconds where a long migration stands."""
    sconn = src.connect()
    try:
        dom = sconn.lookupByName(name)
    except libvirt.libvirtError as exc:
        raise MigrationError(f"{name}: not on {src.name}: {exc.get_error_message()}") from None
    if params.max_downtime_ms and not params.offline:
        dom.migrateSetMaxDowntime(params.max_downtime_ms, 0)
    started_ns, t0 = time.time_ns(), time.monotonic()
    error, aborted = "", False
    # The watchdog gets a connection of its own: calls on the connection that is blocked in
    # migrateToURI3 were seen to hang (abortJob for 10+ minutes under load), killing the budget.
    watch_conn = src.connect(fresh=True)
    # The source's job-completed event carries the completed stats even where the destination keeps
    # none (libvirt 9.0 keeps only `type` there after a postcopy migration).
    source_stats: dict = {}
    event = watch_conn.domainEventRegisterAny(
        watch_conn.lookupByName(name), libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
        lambda _conn, _dom, stats, _opaque: source_stats.update(stats), None)
    qemu_events: list[dict] = []
    monitor_ids = _watch_qemu_events(watch_conn, watch_conn.lookupByName(name), qemu_events)
    box: dict = {}

    def call() -> None:
        try:
            if params.p2p or params.tunnelled:
                dom.migrateToURI3(dst.libvirt_uri, params.typed_params(), params.flags())
            else:
                dom.migrate3(dst.connect(), params.typed_params(), params.flags())
        except libvirt.libvirtError as exc:
            box["error"] = exc.get_error_message()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread, never lost here
            box["raised"] = exc

    with _Watchdog(watch_conn.lookupByName(name), params, progress) as watchdog:
        worker = threading.Thread(target=call, daemon=True, name=f"migrate {name}")
        worker.start()
        while worker.is_alive() and not (watchdog.aborted_at and time.monotonic() - watchdog.aborted_at > ABORT_GRACE_S):
            worker.join(0.2)
        hung = worker.is_alive()
        if "raised" in box:
            raise box["raised"]
        if hung:  # left blocked on the shared connection: later calls get another one
            src.forget_connection()
            error, aborted = (f"{watchdog.fired}, and the migration call had not returned {ABORT_GRACE_S:.0f} s later: "
                              "the job never ended"), True
        elif "error" in box:
            error, aborted = box["error"], bool(watchdog.fired)
            if watchdog.fired:
                error = f"{watchdog.fired}: {error}"
    if not error:
        _wait_for_event(source_stats, 2.0)
        _wait_for_event(lambda: any(e["data"].get("status") == "completed" for e in qemu_events), 2.0)
    def deregister() -> None:
        watch_conn.domainEventDeregisterAny(event)
        for monitor_id in monitor_ids:
            libvirt_qemu.qemuMonitorEventDeregister(watch_conn, monitor_id)
    close_connection(watch_conn, deregister)
    result = MigrationResult(src.name, dst.name, params, started_ns, time.time_ns(), time.monotonic() - t0,
                             switched_to_postcopy=watchdog.postcopy_switched, aborted=aborted, error=error,
                             watchdog_note=watchdog.postcopy_error, throttle_max_pct=watchdog.throttle_max,
                             dirty_rate_reported_mibs=watchdog.dirty_rate_max, call_hung=hung,
                             qemu_events=list(qemu_events))
    if error:
        if watchdog.stats_at_fire:
            result.stats = watchdog.stats_at_fire
        elif hung:  # its domain object is on the blocked connection
            result.stats_note = "the job never ended: no completed-job stats"
        else:
            result.stats, result.stats_note = completed_job_stats(dom, src.name)
        return result
    try:
        result.stats, result.stats_note = completed_job_stats(dst.connect().lookupByName(name), dst.name)
        if result.stats_note and source_stats:
            # Fill what the destination lacks from the source's event, and say where each came from.
            result.stats = {**source_stats, **result.stats, "stats_source": "destination + source job-completed event"}
            missing = [k for k in ("downtime", "time_elapsed") if k not in result.stats]
            result.stats_note += "; taken from the source's job-completed event" + (
                f", which has no {', '.join(missing)} either" if missing else "")
    except libvirt.libvirtError as exc:
        result.error = f"migrated, but {name} is not on {dst.name}: {exc.get_error_message()}"
    return result


def _wait_for_event(received, timeout: float) -> None:
    """The event arrives on libvirt's event loop thread, shortly after the migration call returns.

    received: what the callback fills (done when not empty), or a condition to wait for."""
    done = received if callable(received) else lambda: bool(received)
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def _watch_qemu_events(conn: libvirt.virConnect, dom: libvirt.virDomain, into: list[dict]) -> list[int]:
    """Collect the source QEMU's STOP and MIGRATION events with QEMU's own timestamps (every record keeps them:
    QEMU's own timeline of the switchover, to the microsecond, where libvirt's lifecycle events are stamped on
    arrival)."""
    def received(_conn, _dom, event, seconds, micros, details, _opaque):
        into.append({"event": event, "us": seconds * 1_000_000 + micros, "data": json.loads(details) if details else {}})
    return [libvirt_qemu.qemuMonitorEventRegister(conn, dom, event, received, None, 0) for event in ("STOP", "MIGRATION")]


def get_max_downtime_ms(host: Host, name: str) -> int:
    """Read back the max downtime QEMU will aim for on `name`."""
    dom = host.connect().lookupByName(name)
    return int(dom.migrateGetMaxDowntime(0))

"""Was the migration really done the way it was asked? A setting QEMU ignored must not pass.

libvirt accepts a flag and reads a parameter back as set whether or not QEMU then uses it, so each
setting is checked by what it leaves behind: postcopy switched (the job says so) and served page
requests; xbzrle encoded pages from its cache; multifd opened its channels (TCP connections to the
destination's migration ports, counted on the destination while the migration runs); the guest
dirtied memory at the rate the scenario asked, within DIRTY_RATE_SHARE, just before the migration.
A figure that is absent is a finding of its own, never taken as zero.
"""
from __future__ import annotations

import shlex
import threading
import time
import uuid
from dataclasses import dataclass

from lab.errors import LabError
from lab.migration.live import MigrationParams, MigrationResult
from lab.results.verdicts import Finding, Kind
from lab.runtime.hosts import Host
from lab.runtime.layout import MIGRATION_PORTS

DIRTY_RATE_SHARE = 0.8  # the achieved dirty rate must be at least this share of the rate asked
DIRTY_RATE_WAIT_S = 3.0  # longest wait for the agent's first whole second of dirtying
POLL_S = 0.005  # the counter's local poll: ss takes a few ms; multifd channels live for the whole migration


def dirty_rate_before(guest, asked_mibs: float) -> float:
    """The rate the guest's writer achieves, read on the source before the migration starts. The agent measures
    over whole seconds (a writer just started reads 0), so this waits up to DIRTY_RATE_WAIT_S for the rate asked.
    Read after a migration the figure is the destination's copy of the agent's memory: on a QEMU that loses
    stores (QEMU-TCG-DIRTY-BITMAP) it can be a stale 0.0, a lost page, not an ignored setting."""
    deadline = time.monotonic() + DIRTY_RATE_WAIT_S
    while True:
        rate = float(guest.info()["dirty_mibs"])
        if rate >= DIRTY_RATE_SHARE * asked_mibs or time.monotonic() > deadline:
            return rate
        time.sleep(0.25)


@dataclass
class Observed:
    """What was seen of the migration besides libvirt's job stats."""
    dirty_mibs_before: float | None = None  # the guest's achieved dirty rate just before the migration
    migration_connections_max: int | None = None  # most established connections to the destination's migration ports
    qemu_polls: int | None = None  # the counter's polls that found the destination's QEMU (None: not counted)


class ConnectionCounter:
    """Counts, on `host`, established TCP connections of `domain`'s QEMU (its pid file there) on the migration
    ports, other guests' migrations to the same host not counted. One SSH command for the whole migration,
    polling locally every POLL_S until told to stop (a stop file), so a migration of a few hundred ms is
    still seen: polls of an SSH command each missed such migrations (issue 24)."""

    def __init__(self, host: Host, domain: str, limit_s: float = 900.0):
        self.host = host
        self.domain = domain
        self.limit_s = limit_s
        self.most: int | None = None
        self.qemu_polls: int | None = None  # polls that found the domain's QEMU: a zero count means something then
        self.errors: list[str] = []
        self._stop_file = f"/tmp/kvm-lab-conncount-{uuid.uuid4().hex}"
        self._thread = threading.Thread(target=self._count, daemon=True)

    def _count(self) -> None:
        low, high = MIGRATION_PORTS
        pidfile = shlex.quote(f"/run/libvirt/qemu/{self.domain}.pid")
        script = (f"most=0; q=0; end=$(( $(date +%s) + {int(self.limit_s)} )); "
                  f"while [ ! -e {self._stop_file} ] && [ $(date +%s) -lt $end ]; do "
                  f"if pid=$(cat {pidfile} 2>/dev/null); then q=$((q + 1)); "
                  f"n=$(ss -Htnp state established '( sport >= :{low} and sport <= :{high} )' | grep -c \"pid=$pid,\"); "
                  f"[ \"$n\" -gt \"$most\" ] && most=$n; fi; sleep {POLL_S}; done; "
                  f"rm -f {self._stop_file}; echo \"most=$most qemu=$q\"")
        try:
            out = self.host.run(script, timeout=self.limit_s + 30).stdout
            self.most = int(out.rsplit("most=", 1)[1].split()[0])
            self.qemu_polls = int(out.rsplit("qemu=", 1)[1].split()[0])
        except (LabError, ValueError, IndexError) as exc:
            self.errors.append(str(exc))

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.host.run(f"touch {self._stop_file}", timeout=20)
        except LabError as err:
            self.errors.append(str(err))
        self._thread.join(timeout=30)

    @property
    def seen(self) -> int | None:
        """The most connections seen at once; None when the count did not work or saw not even the main
        channel (a migration has one): then the figure is "not measured", never a zero."""
        return self.most if self.most else None


def _absent(setting: str, field: str, result: MigrationResult) -> Finding:
    return Finding(Kind.SETTING_IGNORED, f"{setting}: libvirt's job stats have no `{field}` to show it was used "
                                         f"({result.stats_note or 'keys: ' + ', '.join(sorted(result.stats))})")


THROTTLE_AFTER_ITERATIONS = 6  # a migration that needed this many iterations had a dirty rate that engages it


def _auto_converge_findings(result: MigrationResult) -> list[Finding]:
    """QEMU's own figure, polled while the job ran (its throttle is back to 0 once it completes)."""
    iterations = result.stats.get("memory_iteration")
    if result.throttle_max_pct is None:
        return [Finding(Kind.NOT_MEASURED, "auto-converge: not measured: libvirt's job stats never carried "
                                           "auto_converge_throttle while the migration ran")]
    if iterations is not None and iterations >= THROTTLE_AFTER_ITERATIONS and result.throttle_max_pct <= 0:
        return [Finding(Kind.SETTING_IGNORED, f"auto-converge: {iterations} iterations, and QEMU never throttled the "
                                              "guest's CPU (auto_converge_throttle stayed 0)")]
    return []


BANDWIDTH_SLACK = 1.5  # the average may pass the cap by this factor: QEMU lifts the cap for the final stop-and-copy


def _bandwidth_findings(cap_mibs: int, result: MigrationResult) -> list[Finding]:
    """The cap as QEMU's own figures show it: the data it sent over the time the migration took."""
    sent, elapsed = result.stats.get("data_processed"), result.stats.get("time_elapsed")
    if sent is None or not elapsed:
        return [_absent("bandwidth", "data_processed" if sent is None else "time_elapsed", result)]
    average = sent / 2**20 / (elapsed / 1000)
    if average > BANDWIDTH_SLACK * cap_mibs:
        return [Finding(Kind.SETTING_IGNORED, f"bandwidth: {sent / 2**20:.1f} MiB sent in {elapsed / 1000:.2f} s, "
                                              f"{average:.1f} MiB/s on average, over {BANDWIDTH_SLACK:g} times the cap of "
                                              f"{cap_mibs} MiB/s")]
    return []


def settings_findings(params: MigrationParams, result: MigrationResult, observed: Observed,
                      dirty_mibs_asked: float = 0) -> list[Finding]:
    """A finding for each setting of `params` the finished migration shows no sign of having used."""
    if not result.ok:
        return []
    stats, found = result.stats, []
    if params.mode == "postcopy":
        if not result.switched_to_postcopy:
            found.append(Finding(Kind.SETTING_IGNORED, "postcopy: the migration never switched to postcopy"))
        requests = stats.get("memory_postcopy_requests")
        if requests is None:
            found.append(_absent("postcopy", "memory_postcopy_requests", result))
        elif requests <= 0:
            found.append(Finding(Kind.SETTING_IGNORED, "postcopy: the destination requested no page: the guest did "
                                                       "not run there before its memory arrived"))
    if params.compression == "xbzrle":
        pages = stats.get("compression_pages")
        if pages is None:
            found.append(_absent("xbzrle", "compression_pages", result))
        elif pages <= 0:
            found.append(Finding(Kind.SETTING_IGNORED, "xbzrle: no page was sent xbzrle-encoded (cache hits 0)"))
    if params.auto_converge:
        found += _auto_converge_findings(result)
    if params.bandwidth_mibs and not result.switched_to_postcopy:  # postcopy has a bandwidth of its own
        found += _bandwidth_findings(params.bandwidth_mibs, result)
    if params.parallel_connections:
        want = params.parallel_connections + 1  # the main channel and the multifd channels
        seen = observed.migration_connections_max
        if seen is None:
            found.append(Finding(Kind.NOT_MEASURED, "multifd: not measured: the counter on the destination saw no "
                                                    "migration connection at all, not even the main channel"))
        elif seen < want:
            found.append(Finding(Kind.SETTING_IGNORED, f"multifd: at most {seen} connection(s) to the destination's "
                                                       f"migration ports, where {params.parallel_connections} "
                                                       f"channels and the main one make {want}"))
    if params.tunnelled:  # the stream goes src QEMU -> libvirtd -> libvirtd -> dst QEMU, never QEMU to QEMU on TCP
        if not observed.qemu_polls:
            found.append(Finding(Kind.NOT_MEASURED, "tunnelled: not measured: the counter never found the "
                                                    "destination's QEMU while the migration ran"))
        elif observed.migration_connections_max:
            found.append(Finding(Kind.SETTING_IGNORED, f"tunnelled: the destination's QEMU took "
                                                       f"{observed.migration_connections_max} TCP connection(s) on the "
                                                       "migration ports itself: the stream did not go through libvirtd"))
    if dirty_mibs_asked:
        rate = observed.dirty_mibs_before
        if rate is None:
            found.append(Finding(Kind.SETTING_IGNORED, "dirty rate: the guest did not report the rate it achieved"))
        elif rate < DIRTY_RATE_SHARE * dirty_mibs_asked:
            found.append(Finding(Kind.SETTING_IGNORED, f"dirty rate: the guest dirtied {rate:.1f} MiB/s before the "
                                                       f"migration, below {DIRTY_RATE_SHARE:.0%} of the "
                                                       f"{dirty_mibs_asked:g} MiB/s asked"))
    return found


STATISTIC_FACTOR = 4  # QEMU's dirty rate may differ from the guest's own this many times (sync periods, page sizes)


def statistics_findings(result: MigrationResult, observed: Observed, dirty_mibs_asked: float = 0,
                        dirty_region_mib: float = 0) -> list[Finding]:
    """Figures QEMU reports, held to what must be true of them: the bytes it says it sent cover the pages it
    says it sent in full, and the dirty rate it reports is what the guest dirtied. QEMU counts distinct pages
    per sync period, so its rate is the guest's R only while R x period < W (the memory the guest sweeps), and
    W / period beyond: it must lie between min(R, W / the whole migration) and R, each within the factor."""
    if not result.ok:
        return []
    found, stats = [], result.stats
    sent, normal = stats.get("memory_processed"), stats.get("memory_normal_bytes")
    if sent is not None and normal is not None and sent < normal:
        found.append(Finding(Kind.STATISTIC_WRONG, f"transferred bytes: QEMU reports {sent / 2**20:.1f} MiB of memory "
                                                   f"processed, less than the {normal / 2**20:.1f} MiB of the full "
                                                   "pages it reports sent"))
    guest, reported = observed.dirty_mibs_before, result.dirty_rate_reported_mibs
    iterations = stats.get("memory_iteration") or 0
    if dirty_mibs_asked and guest and iterations >= 3:  # QEMU has had whole sync periods to measure it
        if reported is None:
            found.append(Finding(Kind.NOT_MEASURED, f"dirty rate: not measured: {iterations} iterations, and the live "
                                                    "job stats never carried a dirty rate"))
        else:
            elapsed = (stats.get("time_elapsed") or 0) / 1000
            low = min(guest, dirty_region_mib / elapsed) if dirty_region_mib and elapsed else guest
            if not low / STATISTIC_FACTOR <= reported <= guest * STATISTIC_FACTOR:
                found.append(Finding(Kind.STATISTIC_WRONG, f"dirty rate: QEMU reported at most {reported:.2f} MiB/s "
                                                           f"while the guest dirtied {guest:.1f} MiB/s over "
                                                           f"{dirty_region_mib:g} MiB (its own count): outside "
                                                           f"{low:.2f}-{guest:.1f} MiB/s by more than a factor of "
                                                           f"{STATISTIC_FACTOR}"))
    return found

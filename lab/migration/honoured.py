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
from dataclasses import dataclass

from lab.errors import LabError
from lab.migration.live import MigrationParams, MigrationResult
from lab.results.verdicts import Finding, Kind
from lab.runtime.hosts import Host
from lab.runtime.layout import MIGRATION_PORTS

DIRTY_RATE_SHARE = 0.8  # the achieved dirty rate must be at least this share of the rate asked
DIRTY_RATE_WAIT_S = 3.0  # longest wait for the agent's first whole second of dirtying
POLL_S = 0.1


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


class ConnectionCounter:
    """Counts, on `host`, established TCP connections of `domain`'s QEMU (its pid file there) on the migration
    ports, every POLL_S, in a thread; other guests' migrations to the same host are not counted."""

    def __init__(self, host: Host, domain: str):
        self.host = host
        self.domain = domain
        self.most = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        low, high = MIGRATION_PORTS
        command = (f"pid=$(cat /run/libvirt/qemu/{shlex.quote(self.domain)}.pid 2>/dev/null) || exit 0; "
                   f"ss -Htnp state established '( sport >= :{low} and sport <= :{high} )' | grep -c \"pid=$pid,\" "
                   "|| true")
        while not self._stop.is_set():
            try:
                self.most = max(self.most, int(self.host.run(command, timeout=10).stdout.strip() or 0))
            except (LabError, ValueError) as exc:
                self.errors.append(str(exc))
            self._stop.wait(POLL_S)

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    @property
    def seen(self) -> int | None:
        return self.most if self.most or not self.errors else None


def _absent(setting: str, field: str, result: MigrationResult) -> Finding:
    return Finding(Kind.SETTING_IGNORED, f"{setting}: libvirt's job stats have no `{field}` to show it was used "
                                         f"({result.stats_note or 'keys: ' + ', '.join(sorted(result.stats))})")


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
    if params.parallel_connections:
        want = params.parallel_connections + 1  # the main channel and the multifd channels
        seen = observed.migration_connections_max
        if seen is None:
            found.append(Finding(Kind.SETTING_IGNORED, "multifd: the destination's connections could not be counted"))
        elif seen < want:
            found.append(Finding(Kind.SETTING_IGNORED, f"multifd: at most {seen} connection(s) to the destination's "
                                                       f"migration ports, where {params.parallel_connections} "
                                                       f"channels and the main one make {want}"))
    if dirty_mibs_asked:
        rate = observed.dirty_mibs_before
        if rate is None:
            found.append(Finding(Kind.SETTING_IGNORED, "dirty rate: the guest did not report the rate it achieved"))
        elif rate < DIRTY_RATE_SHARE * dirty_mibs_asked:
            found.append(Finding(Kind.SETTING_IGNORED, f"dirty rate: the guest dirtied {rate:.1f} MiB/s before the "
                                                       f"migration, below {DIRTY_RATE_SHARE:.0%} of the "
                                                       f"{dirty_mibs_asked:g} MiB/s asked"))
    return found

"""The dirty-page oracle read from outside the guest, on a destination kept paused after the migration.

Under TCG on QEMU < 9.0 the writes a migration loses also hit the guest kernel, which then panics on
the destination as soon as it runs: the agent inside never gets to report. So a dirtying scenario
starts with one migration whose destination stays paused (VIR_MIGRATE_PAUSED): the harness reads
the oracle's pages with QMP `pmemsave` (they sit on 2 MiB pages, physically contiguous, whose
guest-physical addresses the agent gave before), checks the sweep's one boundary and the hot set's,
and only then lets the guest run.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace

from lab.errors import MigrationError
from lab.guest.domain import Guest
from lab.migration.integrity import Fingerprint, inspect
from lab.migration.live import MigrationParams, MigrationResult, migrate
from lab.results.verdicts import Finding, Kind
from lab.runtime.hosts import Host

HUGE = 2 * 1024 * 1024
PAGE = 4096
HOT_PAGES = 8  # on one 2 MiB page
HOT_SMALL_PAGES = 8  # on 4 KiB pages, each at its own guest-physical address


@dataclass(frozen=True)
class OracleMap:
    huge: bool  # the oracle's memory is on 2 MiB pages (else it cannot be read from outside)
    hot: int  # guest-physical address of the hot set
    sweep: tuple[int, ...]  # guest-physical address of each 2 MiB of the sweep region, in sweep order
    sweep_pages: int
    sweep_vpn: int = 0  # virtual page number of the sweep's first page
    tlb_classes: int = 64  # the sweep skips pages whose vpn modulo this is in skip_classes (the hot set's)
    skip_classes: int = 0
    hot_small: tuple[int, ...] = ()  # guest-physical address of each 4 KiB page of the small hot set
    zero_every: int = 0  # the sweep writes a page all-zero in one round of every this many (0: never; stamp())

    def swept(self, index: int) -> bool:
        return not (self.skip_classes >> ((self.sweep_vpn + index) % self.tlb_classes)) & 1


def oracle_map(guest: Guest) -> OracleMap:
    reply = guest.agent("oracle_map")
    sweep = tuple(int(a, 16) for a in reply.get("sweep", "").split(",") if a)
    small = tuple(int(a, 16) for a in reply.get("hot_small", "").split(",") if a)
    return OracleMap(reply.get("huge") == "1" and all(sweep) and all(small), int(reply["hot"], 16), sweep,
                     int(reply["sweep_pages"]), int(reply.get("sweep_vpn", "0"), 16),
                     int(reply.get("tlb_classes", "64")), int(reply.get("skip_classes", "0"), 16), small,
                     int(reply.get("zero_every", "0")))


def stamp(page: int, rnd: int, zero_every: int = 0) -> int:
    """What sweep page `page` holds after round `rnd` (the agent's stamp(), memory.c): the round, or 0 in the
    rounds it writes the page all-zero (so that QEMU sends it as a zero page)."""
    return 0 if rnd and zero_every and (page + rnd) % zero_every == 0 else rnd


def one_boundary_violations(words: list[int], pages: list[int] | None = None,
                            zero_every: int = 0) -> list[tuple[int, int, int]]:
    """(index, found, expected) of every page off the pattern `r ... r, r-1 ... r-1` (one boundary), each
    round's value as stamp() has it for the page (`pages`: each word's page number in the sweep).

    A stale page right at the boundary cannot be told from the boundary itself: it is not counted.
    """
    if not words:
        return []
    pages = list(range(len(words))) if pages is None else pages
    top = max(words)
    now = [stamp(p, top, zero_every) for p in pages]
    last = [stamp(p, max(top - 1, 0), zero_every) for p in pages]
    # The boundary: after the last page holding this round's value where it differs from the last round's.
    boundary = max((i for i, w in enumerate(words) if w == now[i] != last[i]), default=-1) + 1
    return [(i, w, now[i] if i < boundary else last[i]) for i, w in enumerate(words)
            if w != (now[i] if i < boundary else last[i])]


def first_words(host: Host, domain: str, regions: list[tuple[int, int]], folder: str) -> list[list[int]]:
    """The first 8-byte word of every 4 KiB page of each (address, size) region, read by QEMU itself
    (pmemsave), one list per region."""
    host.run(f"rm -rf {folder} && mkdir -p {folder}", timeout=30)
    try:
        for n, (address, size) in enumerate(regions):
            command = json.dumps({"execute": "pmemsave", "arguments": {
                "val": address, "size": size, "filename": f"{folder}/{n}.bin"}})
            host.run(f"virsh qemu-monitor-command {shlex.quote(domain)} {shlex.quote(command)}", timeout=60)
        out = host.run(f"for n in $(seq 0 {len(regions) - 1}); do od -An -tu8 -w{PAGE} -v {folder}/$n.bin "
                       f"| awk '{{print $1}}'; echo END; done", timeout=120).stdout
    finally:
        host.run(f"rm -rf {folder}", check=False, timeout=30)
    regions, current = [], []
    for line in out.split():
        if line == "END":
            regions.append(current)
            current = []
        else:
            current.append(int(line))
    return regions


def check_paused(guest: Guest, host: Host, where: OracleMap) -> tuple[dict, Finding | None]:
    """Read the oracle's memory on `host`, where the guest sits paused after arriving; a finding if pages are off."""
    if not where.huge:
        raise MigrationError(f"{guest.name}: the oracle's memory is not on 2 MiB pages (the guest reserved none): "
                             "it cannot be read from outside")
    folder = f"/tmp/kvm-acceptance-oracle-{guest.name}"
    small = list(where.hot_small)
    regions = first_words(host, guest.name, [(a, HUGE) for a in where.sweep] + [(where.hot, HUGE)]
                          + [(a, PAGE) for a in small], folder)
    sweep_regions = regions[:len(where.sweep)]
    every = [w for region in sweep_regions for w in region][:where.sweep_pages]
    swept = [i for i in range(len(every)) if where.swept(i)]  # pages the sweep never writes are left out
    sweep = [every[i] for i in swept]
    # One thread writes both hot sets in one loop: one boundary over the two together.
    hot = regions[len(where.sweep)][:HOT_PAGES] + [r[0] for r in regions[len(where.sweep) + 1:]]
    hot_addresses = [where.hot + i * PAGE for i in range(HOT_PAGES)] + small
    wrong = [("sweep", where.sweep[swept[i] * PAGE // HUGE] + (swept[i] * PAGE) % HUGE, f, e)
             for i, f, e in one_boundary_violations(sweep, swept, where.zero_every)]
    wrong += [("hot" if i < HOT_PAGES else "hot-4k", hot_addresses[i], f, e)
              for i, f, e in one_boundary_violations(hot)]
    report = {"checked_pages": len(sweep) + len(hot), "sweep_round": max(sweep, default=0),
              "hot_round": max(hot, default=0), "wrong": len(wrong),
              "first": [{"set": s, "guest_physical": hex(a), "found": f, "expected": e} for s, a, f, e in wrong[:8]]}
    if not wrong:
        return report, None
    first = ", ".join(f"{hex(a)} ({s}: found {f}, expected {e})" for s, a, f, e in wrong[:4])
    return report, Finding(Kind.LOST_PAGES, f"lost writes seen from outside the paused destination: {len(wrong)} of "
                                            f"{report['checked_pages']} pages, first at guest-physical {first}")


def migrate_checked_from_outside(lab, guest: Guest, before: Fingerprint, src: Host, dst: Host,
                                 params: MigrationParams) -> tuple[MigrationResult, dict, list[Finding]]:
    """One untimed migration of a dirtying guest whose destination stays paused while the oracle's pages are
    read from outside; then the guest runs and is inspected. Returns the result, a record and the findings."""
    where = oracle_map(guest)
    result = migrate(guest.name, src, dst, replace(params, paused=True))
    if not result.ok:
        return result, {"stats": result.stats}, []
    guest.host = dst
    try:
        report, lost = check_paused(guest, dst, where)
    finally:
        dst.connect().lookupByName(guest.name).resume()
    after = inspect(guest, before, lab.hosts, dst)
    findings = ([lost] if lost else []) + after.findings
    doc = {"paused_destination_check": report, "oracle": after.oracle, "stats": result.stats,
           "findings": [{"kind": f.kind.value, "text": f.text} for f in findings]}
    return result, doc, findings


def verify_from_outside(lab, guest: Guest, before: Fingerprint, src: Host, dst: Host, scenario: str,
                        params: MigrationParams, record) -> list[Finding]:
    """The oracle's move of a dirtying guest (migrate_checked_from_outside), recorded as `oracle-migration`;
    its findings say they come from it. Not timed (the pause would count)."""
    result, doc, findings = migrate_checked_from_outside(lab, guest, before, src, dst, params)
    if not result.ok:
        return [Finding(Kind.MIGRATION_FAILED, f"{scenario}: the oracle's migration {src.name} -> {dst.name} "
                                               f"failed: {result.error}")]
    record({"kind": "oracle-migration", "scenario": scenario, "src": src.name, "dst": dst.name, **doc})
    return [Finding(f.kind, f"oracle migration to {dst.name}: {f.text}") for f in findings]

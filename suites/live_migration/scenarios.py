"""Live migration scenarios as data: what the guest does, how it is migrated, what must happen.

The "link" of the dirty-rate scenarios is the migration bandwidth cap
(LINK_MIBS): it makes "dirtying faster than the link" the same on every lab,
however fast its real network is. A scenario with no dirty rate still has the agent's
dirty-page oracle running (its hot set: 8 pages rewritten every millisecond), so every
migration ends with a memory verdict; "idle" means that rate and no more.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from lab.migration.live import MigrationParams

LINK_MIBS = 16  # MiB/s: the migration bandwidth cap that plays the link's rate
DIRTY_REGION_MIB = 64



@dataclass(frozen=True)
class Scenario:
    id: str
    params: MigrationParams = field(default_factory=MigrationParams)
    dirty_mibs: int = 0  # guest memory dirtying rate during the migration
    dirty_region_mib: int = DIRTY_REGION_MIB  # ... swept over this much memory (each page rewritten every region/rate s)
    storage: str = "shared"  # shared: same disk on both hosts; local: copy it (non-shared)
    smoke: bool = False
    ping_pong: bool = False  # 2 x --repeat migrations, alternating direction

    def with_lab(self, lab, dst_address: str) -> MigrationParams:
        """Fill in what depends on the lab: the migration URI on the lab network, unsafe for undetectable shared storage."""
        uri = None if self.params.tunnelled else f"tcp://{dst_address}"
        unsafe = lab.needs_unsafe(self.storage)
        return replace(self.params, migrate_uri=uri, unsafe=unsafe)


MEASURED = [
    Scenario("precopy-idle", smoke=True),
    Scenario("ping-pong", ping_pong=True, smoke=True),
    Scenario(f"precopy-dirty-4MiBs-link-{LINK_MIBS}MiBs", MigrationParams(bandwidth_mibs=LINK_MIBS), dirty_mibs=4),
    Scenario("autoconverge-dirty-64MiBs", MigrationParams(
        bandwidth_mibs=LINK_MIBS, auto_converge=True, auto_converge_initial_pct=50,
        auto_converge_increment_pct=25, timeout_s=150), dirty_mibs=64),
    Scenario("postcopy-dirty-64MiBs", MigrationParams(
        bandwidth_mibs=LINK_MIBS, mode="postcopy", postcopy_after_iterations=2, timeout_s=150), dirty_mibs=64),
    Scenario("multifd-2-connections", MigrationParams(parallel_connections=2)),
    # xbzrle only helps a page that was sent, cached and dirtied again: 4 MiB rewritten every second, and a
    # 30 ms downtime cap so that the migration iterates after the bulk pass instead of stopping there (over 64
    # MiB with QEMU's 300 ms default, seen: 0 cache hits, 450-1060 misses).
    Scenario(f"xbzrle-dirty-4MiBs-over-4MiB-link-{LINK_MIBS}MiBs",
             MigrationParams(compression="xbzrle", bandwidth_mibs=LINK_MIBS, max_downtime_ms=30),
             dirty_mibs=4, dirty_region_mib=4),
    Scenario("tunnelled-p2p", MigrationParams(tunnelled=True), smoke=True),
    Scenario("non-shared-storage-copy", MigrationParams(copy_storage=True), storage="local", smoke=True),
]

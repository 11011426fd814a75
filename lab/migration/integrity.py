"""What must survive a migration: memory contents, disk contents, the boot, the network answer."""
from __future__ import annotations

import time
from dataclasses import dataclass

from lab.errors import GuestError
from lab.guest.domain import Guest
from lab.runtime.hosts import Host


@dataclass(frozen=True)
class Fingerprint:
    boot_id: str
    fill_mib: int
    disk_sum: str | None


def take_fingerprint(guest: Guest, seed: int = 1234, fill_mib: int = 32, disk_mib: int = 4) -> Fingerprint:
    """Fill guest memory with a known pattern and write known data to its disk; remember both."""
    guest.agent("fill", seed, fill_mib, timeout=60)
    disk_sum = guest.agent("diskwrite", seed, disk_mib, timeout=60)["sum"] if guest.config.disk else None
    return Fingerprint(guest.info()["boot_id"], fill_mib, disk_sum)


def check_intact(guest: Guest, before: Fingerprint, hosts: tuple[Host, ...], expected_host: Host,
                 disk_mib: int = 4) -> list[str]:
    """Problems found after a migration; an empty list means the guest came through whole."""
    problems = []
    where = [h.name for h in guest.locate(hosts)]
    if where != [expected_host.name]:
        problems.append(f"guest runs on {where or 'no host'}, expected only {expected_host.name}")
    info = guest.info()
    if info["boot_id"] != before.boot_id:
        problems.append(f"guest rebooted: boot id {before.boot_id} became {info['boot_id']}")
    try:
        verify = guest.agent("verify", timeout=60)
    except GuestError as exc:
        verify = {"error": str(exc)}
    if verify.get("bad_words") != "0":
        problems.append(f"memory pattern damaged: {verify}")
    if before.disk_sum is not None:
        now = guest.agent("disksum", disk_mib, timeout=60)["sum"]
        if now != before.disk_sum:
            problems.append(f"disk checksum changed: {before.disk_sum} became {now}")
    prober = guest.echo_prober()
    time.sleep(0.3)
    if prober.replies() < 10:
        problems.append(f"guest answered only {prober.replies()} echo probes in 0.3 s on {expected_host.name}")
    prober.close()
    guest.probes.remove(prober)
    return problems

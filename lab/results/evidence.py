"""Evidence from every host of a test: the guest's QEMU and serial logs and the libvirtd log tail,
plus the migration result and its job stats when there is one. The one log collector: failed
tests, failed or aborted migrations and known-defect verdicts all read what it writes."""
from __future__ import annotations

import json
from pathlib import Path

from lab.errors import LabError
from lab.runtime.hosts import Host
from lab.util.files import atomic_write_text

LOG_TAIL_LINES = 400


def collect(hosts: tuple[Host, ...], guest: str, dest: Path, result=None) -> list[Path]:
    """Write `<host>-<guest>.qemu.log`, `<host>-<guest>.serial`, `<host>-libvirtd.log` (tails) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    files = {f"{guest}.qemu.log": f"/var/log/libvirt/qemu/{guest}.log",
             f"{guest}.serial": f"/var/log/libvirt/qemu/{guest}.serial",
             "libvirtd.log": "/var/log/libvirt/libvirtd.log"}
    for host in hosts:
        for name, path in files.items():
            try:
                proc = host.run(f"tail -n {LOG_TAIL_LINES} {path}", check=False, timeout=30)
            except LabError:
                continue  # an unreachable host has no evidence to give; the others still do
            if proc.returncode == 0:
                target = dest / f"{host.name}-{name}"
                atomic_write_text(target, proc.stdout)
                written.append(target)
    if result is not None:
        target = dest / "migration-result.json"
        atomic_write_text(target, json.dumps(result.as_record(), indent=2, default=str))
        written.append(target)
    return written

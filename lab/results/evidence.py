"""Evidence from both hosts when a migration fails or is aborted: logs and job stats, into the test's folder."""
from __future__ import annotations

import json
from pathlib import Path

from lab.runtime.hosts import Host

LOG_TAIL_LINES = 400


def collect(hosts: tuple[Host, ...], guest: str, dest: Path, result=None) -> list[Path]:
    """QEMU log, guest serial log and libvirtd log tail from every host, plus the result and job stats."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    files = {f"{guest}.qemu.log": f"/var/log/libvirt/qemu/{guest}.log",
             f"{guest}.serial": f"/var/log/libvirt/qemu/{guest}.serial",
             "libvirtd.log": "/var/log/libvirt/libvirtd.log"}
    for host in hosts:
        for name, path in files.items():
            proc = host.run(f"tail -n {LOG_TAIL_LINES} {path}", check=False, timeout=30)
            if proc.returncode == 0:
                target = dest / f"{host.name}-{name}"
                target.write_text(proc.stdout)
                written.append(target)
    if result is not None:
        target = dest / "migration-result.json"
        target.write_text(json.dumps(result.as_record(), indent=2, default=str))
        written.append(target)
    return written

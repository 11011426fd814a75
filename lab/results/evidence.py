"""Evidence from every host of a test: the guest's QEMU and serial logs, the libvirtd log tail and,
while the guest's QEMU still runs, where each of its threads is (a stalled guest is diagnosed from
that), plus the migration result and its job stats when there is one. The one log collector: failed
tests, failed or aborted migrations and known-defect verdicts all read what it writes."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from lab.errors import LabError
from lab.runtime.lab import Lab
from lab.util.files import atomic_write_text

LOG_TAIL_LINES = 400


def threads_script(guest: str) -> str:
    """Shell run on a host: each thread of the guest's QEMU (state, kernel wait channel and stack),
    then the user-space stacks from eu-stack where the host has it. Exit 3: that QEMU is not running."""
    pidfile = shlex.quote(f"/run/libvirt/qemu/{guest}.pid")
    return (f"pid=$(cat {pidfile} 2>/dev/null) && [ -d /proc/$pid ] || exit 3; "
            "echo \"QEMU pid $pid: $(tr '\\0' ' ' < /proc/$pid/cmdline | cut -c1-200)\"; "
            "for t in /proc/$pid/task/*; do "
            "echo \"== thread ${t##*/} $(cat $t/comm) state=$(sed 's/.*) //' $t/stat | cut -d' ' -f1) wchan=$(cat $t/wchan) "
            "syscall=$(cut -d' ' -f1 $t/syscall)\"; cat $t/stack 2>/dev/null; done; "
            "if command -v eu-stack >/dev/null; then echo '== eu-stack'; timeout 30 eu-stack -p $pid 2>&1; fi; true")


def collect(lab: Lab, guest: str, dest: Path, result=None) -> list[Path]:
    """Write `<host>-<guest>.qemu.log`, `.serial`, `.threads` (QEMU still running) and `<host>-libvirtd.log`
    (tails) from every host into dest, and the tails of the lab's own servers' logs (e.g. the NFS server's)."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    commands = {f"{guest}.qemu.log": f"tail -n {LOG_TAIL_LINES} /var/log/libvirt/qemu/{guest}.log",
                f"{guest}.serial": f"tail -n {LOG_TAIL_LINES} /var/log/libvirt/qemu/{guest}.serial",
                f"{guest}.threads": threads_script(guest),
                "libvirtd.log": f"tail -n {LOG_TAIL_LINES} /var/log/libvirt/libvirtd.log"}
    for host in lab.hosts:
        for name, command in commands.items():
            try:
                proc = host.run(command, check=False, timeout=60)
            except LabError:
                continue  # an unreachable host has no evidence to give; the others still do
            if proc.returncode == 0:
                target = dest / f"{host.name}-{name}"
                atomic_write_text(target, proc.stdout)
                written.append(target)
    for name, path in lab.server_logs.items():
        try:
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            continue
        target = dest / name
        atomic_write_text(target, "\n".join(lines) + "\n")
        written.append(target)
    if result is not None:
        target = dest / "migration-result.json"
        atomic_write_text(target, json.dumps(result.as_record(), indent=2, default=str))
        written.append(target)
    return written

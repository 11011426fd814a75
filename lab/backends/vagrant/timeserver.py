"""The Vagrant lab's time: an NTP server on the runner, and the hosts' clocks checked against it.

libvirt's downtime figure is the destination's resume time minus the source's
stop time, stamped on two hosts. VMs start from a one-second RTC and drift
apart under TCG; seen here: libvirt reported 766 ms where the guest saw a
523 ms gap. The VMs' chrony (provision, role common) follows this server.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from lab.errors import BackendError, MissingToolError
from lab.util.process import run, terminate, wait_until

SYNCED_WITHIN_S = 0.005  # a host counts as on the runner's clock once chrony's offset is below this


def start_time_server(lab_dir: Path, runner_address: str, subnet: str) -> int:
    """chronyd on the runner's lab address, serving its own clock; -x: it never sets this machine's clock."""
    chronyd = shutil.which("chronyd") or "/usr/sbin/chronyd"
    if not Path(chronyd).exists():
        raise MissingToolError("chronyd not found: apt-get install chrony (the Vagrant lab's time server)")
    conf, pidfile = lab_dir / "chrony-server.conf", lab_dir / "chronyd.pid"
    conf.write_text(f"bindaddress {runner_address}\nallow {subnet}\nlocal stratum 8\ncmdport 0\n"
                    f"pidfile {pidfile}\n")
    pidfile.unlink(missing_ok=True)
    proc = run([chronyd, "-x", "-u", "root", "-f", conf], check=False, timeout=30)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, interval=0.2)
    if proc.returncode != 0 or not pidfile.exists():
        last = (proc.stderr.strip().splitlines() or ["no pidfile"])[-1]
        raise BackendError(f"the lab's time server (chronyd on {runner_address}:123) did not start: {last}; "
                           "is another NTP server bound to port 123?")
    return int(pidfile.read_text().strip())


def stop_time_server(pid: int) -> bool:
    """End the chronyd this lab started, by its PID (only if that PID is still a chronyd)."""
    if not is_program(pid, "chronyd"):
        return False
    terminate({pid}, grace=10)
    return True


def is_program(pid: int, name: str) -> bool:
    """True when PID runs `name` (a recorded PID may have been reused by something else)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().endswith(name)
    except OSError:
        return False


def wait_for_clock(host, server: str, timeout_s: float = 180) -> float:
    """Wait until the host's chrony follows `server` within SYNCED_WITHIN_S; its offset in seconds."""
    deadline = time.monotonic() + timeout_s
    seen = "no answer"
    while time.monotonic() < deadline:
        # chronyc -c tracking: ref_id,ref_name,stratum,ref_time,system_time,last_offset,...,leap_status
        proc = host.run("chronyc -n -c tracking", check=False, timeout=20)
        fields = proc.stdout.strip().split(",")
        if proc.returncode == 0 and len(fields) >= 14:
            seen = f"reference {fields[1]}, offset {float(fields[4]) * 1000:.1f} ms, leap {fields[13]}"
            if fields[1] == server and abs(float(fields[4])) < SYNCED_WITHIN_S and fields[13] == "Normal":
                return float(fields[4])
        elif proc.returncode != 0:
            seen = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        time.sleep(2)
    raise BackendError(f"{host.name}: clock not on the lab's time server {server} within {timeout_s:.0f} s "
                       f"({seen}); libvirt's downtime figures would compare two clocks that disagree")

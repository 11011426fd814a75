"""One SSH connection per host for a preflight run, shared by every check's commands.

A preflight run sends some forty commands to two hosts; each on its own connection
costs a key exchange (0.3-0.5 s of CPU on a loaded two-core runner), which made
doctor take 9-10 s. `multiplexed` opens one master connection per host for the
run (OpenSSH ControlMaster), ended by PID when the run ends; `run_on` sends a
command over it. Without a master (it could not connect: a check will say why)
or when the host refuses another session on it, the command goes as before, on a
connection of its own.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from lab.runtime.hosts import Host
from lab.util.process import run, spawn, terminate_group, wait_until

MASTER_WAIT_S = 3  # a master not up by then is not waited for: commands connect on their own meanwhile
_lock = threading.Lock()
_masters: dict[str, tuple[Path, subprocess.Popen, int]] = {}  # ssh target -> (socket, master, users)


def _key(host: Host) -> str:
    return f"{host.ssh_target}|{host.ssh_config}|{host.ssh_key}"


@contextlib.contextmanager
def multiplexed(hosts: tuple[Host, ...]) -> Iterator[None]:
    """Masters for `hosts` while the block runs (shared with a run on the same host that is open already)."""
    mine = []
    try:
        for host in {_key(h): h for h in hosts}.values():
            with _lock:
                known = _masters.get(_key(host))
                if known:
                    _masters[_key(host)] = (known[0], known[1], known[2] + 1)
                    mine.append(host)
                    continue
                socket = Path(tempfile.mkdtemp(prefix="lab-pf-")) / "ssh"  # short: socket paths end at ~100 characters
                master = spawn(["ssh", *host.ssh_options(), "-o", "ControlMaster=yes", "-o", f"ControlPath={socket}",
                                "-o", "ControlPersist=no", "-N", host.ssh_target])
                _masters[_key(host)] = (socket, master, 1)
                mine.append(host)
        for host in mine:
            socket, master, _ = _masters[_key(host)]
            wait_until(lambda: socket.exists() or master.poll() is not None, MASTER_WAIT_S)
        yield
    finally:
        for host in mine:
            with _lock:
                socket, master, users = _masters[_key(host)]
                if users > 1:
                    _masters[_key(host)] = (socket, master, users - 1)
                    continue
                del _masters[_key(host)]
            terminate_group(master, grace=3)  # our own child, by PID
            shutil.rmtree(socket.parent, ignore_errors=True)


def run_on(host: Host, command: str, timeout: float) -> subprocess.CompletedProcess:
    """`command` on `host` over its master when there is one, else as Host.run; no exception on a non-zero exit."""
    with _lock:
        known = _masters.get(_key(host))
    if known and known[0].exists():
        argv = ["ssh", *host.ssh_options(), "-o", "ControlMaster=no", "-o", f"ControlPath={known[0]}",
                host.ssh_target, command]
        proc = run(argv, check=False, timeout=timeout, what=f"{host.name}: `{command}`")
        # 255 with a mux complaint: the host refused one more session on the shared connection.
        if not (proc.returncode == 255 and ("mux" in proc.stderr or "refused" in proc.stderr.lower())):
            return proc
    return host.run(command, check=False, timeout=timeout)

"""A Host: what every backend yields and every suite uses.

Name + address + libvirt URI + SSH target. The suites never ask which backend
made a host; they reach it over SSH and libvirt like a real machine.
"""
from __future__ import annotations

import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import libvirt
import testinfra

from lab.errors import LabError
from lab.util.process import run

_conn_cache: dict[str, libvirt.virConnect] = {}
_conn_lock = threading.Lock()
_prepared = False


def prepare_libvirt() -> None:
    """Once per process: keep libvirt quiet on stderr and run its event loop.

    libvirt prints every error to stderr by default; the harness reports them itself.
    The event loop answers the daemons' keepalive pings: without one, a cached
    connection idle for ~30 s is closed by libvirtd ("client socket is closed").
    """
    global _prepared
    with _conn_lock:
        if _prepared:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_libvirt_events, name="libvirt-events", daemon=True).start()
        _prepared = True


def _run_libvirt_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    ssh_user: str
    ssh_key: Path
    libvirt_uri: str
    ssh_config: Path | None = None  # client config with the lab's known_hosts, when the backend made one
    host_uuid: str = ""  # libvirt's host UUID, where the backend knows it
    stack: str = "system"  # the name of the QEMU + libvirt stack it runs (lab.yaml hosts[].stack)
    backports: tuple[str, ...] = ()  # upstream commits its QEMU carries beyond its version (StackRecord.backports)

    @property
    def ssh_target(self) -> str:
        return f"{self.ssh_user}@{self.address}"

    def ssh_options(self) -> list[str]:
        if self.ssh_config:
            return ["-F", str(self.ssh_config), "-i", str(self.ssh_key)]
        return ["-i", str(self.ssh_key), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]

    def ssh_argv(self, command: str | None = None) -> list[str]:
        argv = ["ssh", *self.ssh_options(), self.ssh_target]
        return argv + [command] if command else argv

    def run(self, command: str, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command on the host over SSH."""
        return run(self.ssh_argv(command), check=check, timeout=timeout, what=f"{self.name}: `{command}`")

    def connect(self, fresh: bool = False):
        """A libvirt connection to this host over qemu+ssh, shared per process."""
        prepare_libvirt()
        with _conn_lock:
            conn = None if fresh else _conn_cache.get(self.libvirt_uri)
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
            try:
                conn = libvirt.open(self.libvirt_uri)
            except libvirt.libvirtError as exc:
                raise LabError(f"{self.name}: cannot connect to {self.libvirt_uri}: {exc.get_error_message()}") from None
            if not fresh:
                _conn_cache[self.libvirt_uri] = conn
            return conn

    def forget_connection(self) -> None:
        """Drop the shared connection (one a call stays blocked on): the next connect() opens another."""
        with _conn_lock:
            _conn_cache.pop(self.libvirt_uri, None)

    def testinfra(self):
        """A testinfra host over SSH (the lab's client config when there is one), for testinfra-style checks."""
        if self.ssh_config:
            return testinfra.get_host(f"ssh://{self.ssh_target}", ssh_config=str(self.ssh_config))
        return testinfra.get_host(f"paramiko://{self.ssh_target}", ssh_identity_file=str(self.ssh_key))

    def shell_quote(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in args)


CLOSE_WAIT_S = 10.0


def close_connection(conn: libvirt.virConnect, first: Callable[[], None] | None = None) -> bool:
    """Close a libvirt connection without staking the caller on it; False: it did not close in CLOSE_WAIT_S.
    `first`: what to do on it before (deregister its event callbacks: calls to the daemon too).

    libvirt 9.0's client can deadlock in virConnectClose: an event that arrives while the close waits for its
    reply drops the last reference to an object whose disposal calls the daemon again, on the lock the close
    holds (seen: a fault test hung 14 min in SourceWatch.close after the source libvirtd was killed). So the
    close runs in a thread of its own; one that does not end is left behind with its connection."""
    done = threading.Event()

    def close() -> None:
        try:
            if first is not None:
                first()
            conn.close()
        except libvirt.libvirtError:  # a dead connection may fail to close; nothing to do
            pass
        finally:
            done.set()

    threading.Thread(target=close, daemon=True, name="libvirt-close").start()
    return done.wait(CLOSE_WAIT_S)


def forget_connections() -> None:
    """Drop cached libvirt connections (after the lab went down and up again)."""
    with _conn_lock:
        for conn in _conn_cache.values():
            close_connection(conn)
        _conn_cache.clear()

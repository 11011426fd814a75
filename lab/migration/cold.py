"""Cold migration: shut the guest down cleanly, move its definition (and disk, if not shared), boot it there.

Order matters for "nothing lost": the destination gets the definition only after
the disk copy is verified, so an interrupted copy leaves the source definition
and disk untouched and the guest can start on the source again.
"""
from __future__ import annotations

import hashlib
import shlex
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field

import libvirt

from lab.errors import AgentTimeout, MigrationError, PreflightError
from lab.guest.domain import Guest
from lab.migration.live import MigrationParams, migrate
from lab.preflight import FAIL, context_for, run_preflight
from lab.runtime.hosts import Host

CHUNK = 1 << 20


@dataclass
class ColdResult:
    src: str
    dst: str
    storage: str
    phases_s: dict[str, float] = field(default_factory=dict)  # shutdown, copy, define, boot
    bytes_copied: int = 0
    disk_sha256: str = ""
    total_s: float = 0.0
    started_ns: int = 0
    finished_ns: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def as_record(self) -> dict:
        return asdict(self)


def _shut_off(host: Host, name: str) -> bool:
    try:
        return host.connect().lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    except libvirt.libvirtError:
        return False


def shutdown_cleanly(guest: Guest, timeout: float = 60) -> float:
    """Ask the guest to power off (sync, then off) and wait until libvirt sees it shut off."""
    start = time.monotonic()
    try:
        guest.agent("poweroff", timeout=30)
    except AgentTimeout as exc:
        # The reply can die with the machine: a guest that is off has obeyed.
        if not _shut_off(guest.host, guest.name):
            age = (time.time_ns() - guest.heartbeats.last_time()) / 1e9
            raise MigrationError(f"{exc} (last heartbeat {age:.1f} s ago: "
                                 f"{'the guest is stalled' if age > 2 else 'the guest runs but its agent is busy'}); "
                                 "nothing was moved") from None
    while time.monotonic() - start < timeout:
        if _shut_off(guest.host, guest.name):
            return time.monotonic() - start
        time.sleep(0.05)
    age = (time.time_ns() - guest.heartbeats.last_time()) / 1e9
    raise MigrationError(f"{guest.name} did not shut off within {timeout:.0f} s on {guest.host.name} "
                         f"(last heartbeat {age:.1f} s ago); nothing was moved")


def copy_disk(src: Host, dst: Host, path: str, cancel: threading.Event | None = None,
              rate_mibs: float = 0) -> tuple[int, str]:
    """Stream the disk src -> runner -> dst into PATH.partial, hashing in transit; verify on dst, then rename.

    On cancel or any failure the partial file is removed and the source is not touched.
    """
    expected = src.run(f"sha256sum {shlex.quote(path)}", timeout=300).stdout.split()[0]
    partial = f"{path}.partial"
    reader = subprocess.Popen(src.ssh_argv(f"cat {shlex.quote(path)}"), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    writer = subprocess.Popen(dst.ssh_argv(f"cat > {shlex.quote(partial)}"), stdin=subprocess.PIPE)
    digest, copied, started = hashlib.sha256(), 0, time.monotonic()
    try:
        while chunk := reader.stdout.read(CHUNK):
            if cancel is not None and cancel.is_set():
                raise MigrationError(f"disk copy of {path} cancelled after {copied >> 20} MiB; source untouched")
            writer.stdin.write(chunk)
            digest.update(chunk)
            copied += len(chunk)
            if rate_mibs:
                ahead = copied / (rate_mibs * CHUNK) - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        writer.stdin.close()
        if writer.wait(timeout=300) != 0 or reader.wait(timeout=60) != 0:
            raise MigrationError(f"disk copy of {path} {src.name} -> {dst.name} failed; source untouched")
        got = dst.run(f"sha256sum {shlex.quote(partial)}", timeout=300).stdout.split()[0]
        if not (got == expected == digest.hexdigest()):
            raise MigrationError(f"disk copy of {path}: checksum {expected} on {src.name} became {got} on {dst.name}")
        dst.run(f"mv {shlex.quote(partial)} {shlex.quote(path)}")
        return copied, expected
    except BaseException:
        for proc in (reader, writer):  # our own children, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        dst.run(f"rm -f {shlex.quote(partial)}", check=False)
        raise


COLD_PREFLIGHT = ("storage-mode", "storage-filesystem", "storage-writable", "destination-room",
                  "destination-memory", "cpu-model", "machine-type", "versions")


def cold_preflight(lab, guest: Guest, dst: Host, copy: bool) -> None:
    """The checks that matter while the guest is off; any fail stops the move before anything changes."""
    ctx = context_for(lab, src=guest.host.name, dst=dst.name, guest=guest.name)
    ctx.storage_mode = "local" if copy else ctx.storage_mode
    failed = [r for r in run_preflight(ctx, list(COLD_PREFLIGHT)) if r.status == FAIL]
    if failed:
        raise PreflightError(f"cold migration of {guest.name} to {dst.name} refused before anything moved: "
                             + "; ".join(r.line() for r in failed))


def cold_migrate(guest: Guest, src: Host, dst: Host, *, copy: bool, cancel: threading.Event | None = None,
                 copy_rate_mibs: float = 0, boot_timeout: float | None = None) -> ColdResult:
    """Move a running guest src -> dst with a clean shutdown; the guest runs on dst afterwards.

    Refuses before touching anything when dst already has a domain of that name.
    """
    result = ColdResult(src.name, dst.name, "local (copied)" if copy else "shared", started_ns=time.time_ns())
    try:
        dst.connect().lookupByName(guest.name)
        raise MigrationError(f"{dst.name} already has a domain named {guest.name!r}: refusing to overwrite it; "
                             "remove or rename it there first")
    except libvirt.libvirtError:
        pass  # not there: good
    t0 = time.monotonic()
    result.phases_s["shutdown"] = shutdown_cleanly(guest)
    try:
        if copy:
            t = time.monotonic()
            result.bytes_copied, result.disk_sha256 = copy_disk(src, dst, guest.config.disk, cancel, copy_rate_mibs)
            result.phases_s["copy"] = time.monotonic() - t
        t = time.monotonic()
        offline = migrate(guest.name, src, dst, MigrationParams(live=False, offline=True, p2p=True))
        if not offline.ok:
            raise MigrationError(f"moving the definition {src.name} -> {dst.name} failed: {offline.error}")
        result.phases_s["define"] = time.monotonic() - t
    except BaseException as exc:
        result.error = str(exc)
        result.total_s = time.monotonic() - t0
        return result  # the guest is shut off on src with its definition and disk: start_on(src) brings it back
    t = time.monotonic()
    boot_ns = time.time_ns()
    dst.connect().lookupByName(guest.name).create()
    guest.host = dst
    boot_timeout = boot_timeout or guest.config.boot_timeout_s
    deadline = time.monotonic() + boot_timeout
    while guest.heartbeats.count_since(boot_ns) == 0:
        if time.monotonic() > deadline:
            result.error = f"{guest.name} started on {dst.name} but sent no heartbeat within {boot_timeout:.0f} s"
            break
        time.sleep(0.01)
    result.phases_s["boot"] = time.monotonic() - t
    result.total_s = time.monotonic() - t0
    result.finished_ns = time.time_ns()
    return result


def wait_echo(prober, since_ns: int, count: int = 20, timeout: float = 10) -> int:
    """Wait for `count` echo replies after since_ns (or the timeout); how many came."""
    deadline = time.monotonic() + timeout
    while prober.replies_since(since_ns) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return prober.replies_since(since_ns)


def interruption_s(prober, start_ns: int) -> float:
    """A cold move's service interruption: the echo service's longest silence since start_ns."""
    return prober.window(start_ns, time.time_ns()).max_gap_ms / 1000


def start_on(guest: Guest, host: Host, timeout: float = 90) -> None:
    """Start a shut-off guest on `host` again and wait for its first heartbeat."""
    since = time.time_ns()
    host.connect().lookupByName(guest.name).create()
    guest.host = host
    deadline = time.monotonic() + timeout
    while guest.heartbeats.count_since(since) == 0:
        if time.monotonic() > deadline:
            raise MigrationError(f"{guest.name} did not come back on {host.name} within {timeout:.0f} s")
        time.sleep(0.01)

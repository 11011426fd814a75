"""Where a patched QEMU process lives, and how the driver reaches it there: running
`libcare-ctl`, handing it the kpatch file, and reading the process's executable and
memory map for a diagnosis. `LocalSite` is this machine (libcare-ctl run directly,
/proc read directly); `HostSite` is a lab host, reached over its SSH like everything
else a suite does, so the same test works on every backend. A file crosses between
the runner and a host only when the other side does not already see the same bytes at
the same path (the embedded lab's hosts share this machine's filesystem; real ones do not).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from pathlib import Path
from typing import Sequence

from lab.errors import HotpatchError, LabError
from lab.hotpatch.diagnosis import Symbolizer
from lab.runtime.hosts import Host
from lab.util.elf import Symbols, build_id
from lab.util.process import run

CTL_TIMEOUT = 300.0  # libcare-ctl may wait up to 3 s per try for each thread to leave a patched function
HOST_STAGING = "/var/tmp/kvm-acceptance-kpatches"  # kpatches copied to a host that does not see the runner's
LOCAL_COPIES = Path(tempfile.gettempdir()) / "kvm-acceptance-qemu-binaries"  # a host's QEMU binary, for reading


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_base(maps: str, exe: str) -> int | None:
    """Where the executable `exe` is mapped (its offset-0 mapping) in a /proc/PID/maps text; None when absent."""
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] == exe and int(parts[2], 16) == 0:
            return int(parts[0].split("-")[0], 16)
    return None


class Site:
    """What the driver needs from the place a process runs; the diagnosis helpers are common to both."""

    def ctl(self, args: Sequence[str], timeout: float = CTL_TIMEOUT) -> str:
        """libcare-ctl's output (stdout + stderr); its exit status says nothing, so it is not looked at."""
        raise NotImplementedError

    def stage(self, kpatch: str | os.PathLike) -> str:
        """A path of the kpatch file that libcare-ctl there can read."""
        raise NotImplementedError

    def exe(self, pid: int) -> str:
        """The path of the executable PID runs, as the site sees it."""
        raise NotImplementedError

    def exe_copy(self, pid: int) -> str | None:
        """A path on this machine with the bytes of the executable PID runs; None when PID is gone."""
        raise NotImplementedError

    def maps(self, pid: int) -> str:
        raise NotImplementedError

    def exe_build_id(self, pid: int) -> str:
        """The buildID of the binary PID runs, or "unknown" when it cannot be read."""
        try:
            copy = self.exe_copy(pid)
            return build_id(copy, error=HotpatchError) if copy else "unknown"
        except (OSError, LabError):
            return "unknown"

    def symbolizer(self, pid: int) -> Symbolizer | None:
        """Runtime address in PID -> function name, via the executable's load base (PIE); None without symbols."""
        try:
            copy = self.exe_copy(pid)
        except (OSError, LabError):
            copy = None
        if copy is None:
            return None
        symbols = Symbols(copy, error=HotpatchError)
        base = load_base(self.maps(pid), self.exe(pid))

        def name(addr: int) -> str:
            try:
                for candidate in ([addr - base] if base is not None else []) + [addr]:
                    found = symbols.name_at(candidate)
                    if found:
                        return found
            except LabError:  # unreadable symbols: the diagnosis names the address instead
                pass
            return ""
        return name


class LocalSite(Site):
    """This machine: libcare-ctl from the driver's bindir, /proc and binaries read directly."""

    def __init__(self, bindir: Path):
        self.bindir = bindir

    def ctl(self, args: Sequence[str], timeout: float = CTL_TIMEOUT) -> str:
        proc = run([str(self.bindir / "libcare-ctl"), *args], check=False, timeout=timeout, error=HotpatchError,
                   what=f"libcare-ctl {' '.join(args)}")
        return proc.stdout + proc.stderr

    def stage(self, kpatch: str | os.PathLike) -> str:
        return str(kpatch)

    def exe(self, pid: int) -> str:
        return os.path.realpath(f"/proc/{pid}/exe")

    def exe_copy(self, pid: int) -> str | None:
        exe = f"/proc/{pid}/exe"  # through /proc: right even when the file was replaced since QEMU started
        return exe if os.path.exists(exe) else None

    def maps(self, pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return ""


class HostSite(Site):
    """A lab host, over SSH: libcare-ctl from the runner's bindir when the host has it there, else its PATH."""

    def __init__(self, host: Host, bindir: Path | None = None, staging: str = HOST_STAGING):
        self.host = host
        self.bindir = bindir
        self.staging = staging

    def _sh(self, command: str, timeout: float = 60):
        return self.host.run(command, check=False, timeout=timeout)

    def ctl(self, args: Sequence[str], timeout: float = CTL_TIMEOUT) -> str:
        path = f"PATH={shlex.quote(str(self.bindir))}:$PATH " if self.bindir else ""
        proc = self._sh(f"{path}libcare-ctl {self.host.shell_quote(*args)}", timeout=timeout)
        return proc.stdout + proc.stderr

    def digest(self, path: str) -> str | None:
        """sha256 of a file on the host; None when it cannot be read there."""
        proc = self._sh(f"sha256sum {shlex.quote(path)}", timeout=120)
        words = proc.stdout.split()
        return words[0] if proc.returncode == 0 and words else None

    def realpath(self, path: str) -> str:
        proc = self._sh(f"readlink -f {shlex.quote(path)}")
        return proc.stdout.strip() or path

    def stage(self, kpatch: str | os.PathLike) -> str:
        local = os.path.abspath(kpatch)
        digest = sha256_file(local)
        if self.digest(local) == digest:
            return local  # the host sees this very file
        remote = f"{self.staging}/{digest[:16]}/{os.path.basename(local)}"
        if self.digest(remote) != digest:
            self.host.run(f"mkdir -p {shlex.quote(os.path.dirname(remote))}")
            self._scp(local, f"{self.host.ssh_target}:{remote}")
        return remote

    def exe(self, pid: int) -> str:
        return self.realpath(f"/proc/{pid}/exe")

    def exe_copy(self, pid: int) -> str | None:
        want = self.digest(f"/proc/{pid}/exe")
        if want is None:
            return None
        exe = self.exe(pid)
        if os.path.exists(exe) and sha256_file(exe) == want:
            return exe  # this machine has the same binary at the same path
        copy = LOCAL_COPIES / want[:16] / os.path.basename(exe)
        if not (copy.exists() and sha256_file(copy) == want):
            copy.parent.mkdir(parents=True, exist_ok=True)
            self._scp(f"{self.host.ssh_target}:{exe}", str(copy))
        return str(copy)

    def maps(self, pid: int) -> str:
        return self._sh(f"cat /proc/{pid}/maps").stdout

    def _scp(self, src: str, dst: str) -> None:
        run(["scp", "-q", *self.host.ssh_options(), src, dst], timeout=600, error=HotpatchError,
            what=f"scp {src} {dst} ({self.host.name})")


def site_for(host: Host | None = None, bindir: Path | None = None) -> Site:
    """Where to reach a process: on `host` (a lab Host) over SSH, or on this machine when host is None."""
    return HostSite(host, bindir) if host is not None else LocalSite(bindir)


def qemu_pid(host: Host, domain: str) -> int:
    """The PID of a running domain's QEMU, from libvirt's pid file on the host that runs it."""
    return int(host.run(f"cat /run/libvirt/qemu/{shlex.quote(domain)}.pid").stdout.strip())

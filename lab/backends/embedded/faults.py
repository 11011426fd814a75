"""Faults on an embedded lab host (lab.runtime.faults.FaultInjector): kills by the PID the host
itself recorded, nftables rules and TCP sysctls inside the host's network namespace, a memory
limit on the host's libvirtd. A PID is only signalled after checking that it lives in that host's
network namespace and is the process asked for: every host shares the one kernel."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lab.backends.embedded import host as hostmaker
from lab.backends.embedded.backend import EmbeddedBackend
from lab.config.lab import LabConfig
from lab.errors import BackendError
from lab.runtime.faults import Cut
from lab.runtime.layout import LabLayout
from lab.runtime.state import HostState, LabState
from lab.util.process import alive, run

DAEMONS = ("libvirtd", "virtlogd")


class EmbeddedFaults:
    def __init__(self, config: LabConfig):
        self.config = config
        self.layout = LabLayout(config.name)
        self._cuts = 0

    def _host(self, host: str) -> HostState:
        state = LabState.load(self.config.name)
        if state is None:
            raise BackendError(f"lab {self.config.name!r} is not up")
        return state.host(host)

    def _checked(self, hstate: HostState, pid: int | None, marker: str) -> int | None:
        """pid if alive, in the host's network namespace, with `marker` in its command line."""
        if not pid or not alive(pid):
            return None
        try:
            same_net = os.readlink(f"/proc/{pid}/ns/net") == os.readlink(f"/proc/{hstate.holder_pid}/ns/net")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        if not same_net or marker not in cmdline:
            raise BackendError(f"{hstate.name}: PID {pid} from its pid file is not {marker!r} in that host "
                               f"(net namespace {'same' if same_net else 'other'}; {cmdline[:120]!r}): not signalled")
        return pid

    @staticmethod
    def _read_pid(path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    # -- processes -------------------------------------------------------------
    def qemu_pid(self, host: str, domain: str) -> int | None:
        hstate = self._host(host)
        # The host's /run/libvirt is this directory bind-mounted: the file libvirtd wrote there.
        pidfile = self.layout.host_dir(host) / "run-libvirt" / "qemu" / f"{domain}.pid"
        return self._checked(hstate, self._read_pid(pidfile), f"guest={domain}")

    def kill_qemu(self, host: str, domain: str) -> int:
        pid = self.qemu_pid(host, domain)
        if pid is None:
            raise BackendError(f"{host}: no live QEMU for {domain} in its pid file")
        os.kill(pid, signal.SIGKILL)
        return pid

    def _daemon_pid(self, host: str, daemon: str) -> int:
        if daemon not in DAEMONS:
            raise BackendError(f"{daemon}: not a daemon faults may touch ({', '.join(DAEMONS)})")
        hstate = self._host(host)
        pid = self._checked(hstate, self._read_pid(self.layout.host_dir(host) / f"{daemon}.pid"), daemon)
        if pid is None:
            raise BackendError(f"{host}: {daemon} is not running (pid file {self.layout.host_dir(host)}/{daemon}.pid)")
        return pid

    def kill_daemon(self, host: str, daemon: str) -> int:
        pid = self._daemon_pid(host, daemon)
        os.kill(pid, signal.SIGKILL)
        return pid

    def freeze_daemon(self, host: str, daemon: str) -> int:
        pid = self._daemon_pid(host, daemon)
        os.kill(pid, signal.SIGSTOP)
        return pid

    def thaw_daemon(self, host: str, daemon: str) -> None:
        os.kill(self._daemon_pid(host, daemon), signal.SIGCONT)

    def restart_daemon(self, host: str, daemon: str) -> int:
        pidfile = self.layout.host_dir(host) / f"{daemon}.pid"
        old = self._read_pid(pidfile)
        deadline = time.monotonic() + 15  # a SIGKILLed daemon with threads in the kernel takes a moment to go
        while old and alive(old) and time.monotonic() < deadline:
            time.sleep(0.1)
        if old and alive(old):
            raise BackendError(f"{host}: {daemon} (PID {old}) is still running; kill it first")
        pidfile.unlink(missing_ok=True)  # a SIGKILLed daemon leaves its pid file behind
        EmbeddedBackend(self.config).start_daemon(host, daemon)  # records the new PID in the lab's state
        return self._daemon_pid(host, daemon)

    def limit_memory(self, host: str, daemon: str, data_bytes: int | None) -> None:
        # The soft limit only: raising a hard limit back needs CAP_SYS_RESOURCE, which a container may lack.
        limit = "unlimited" if data_bytes is None else str(data_bytes)
        run(["prlimit", f"--pid={self._daemon_pid(host, daemon)}", f"--data={limit}:"], error=BackendError)

    def data_bytes(self, host: str, daemon: str = "", domain: str = "") -> int:
        pid = self.qemu_pid(host, domain) if domain else self._daemon_pid(host, daemon)
        if pid is None:
            raise BackendError(f"{host}: no live QEMU for {domain} in its pid file")
        status = Path(f"/proc/{pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmData:"))
        return kib * 1024

    # -- network -----------------------------------------------------------------
    def cut(self, host: str, peer_address: str, ports: tuple[int, int]) -> Cut:
        self._cuts += 1
        table = f"labfault{os.getpid()}x{self._cuts}"
        span = f"{ports[0]}-{ports[1]}" if ports[0] != ports[1] else str(ports[0])
        # Both ways, so neither side's TCP sees an answer: each must time out on its own.
        rules = (f"table inet {table} {{\n"
                 f"  chain input {{ type filter hook input priority -10; ip saddr {peer_address} tcp dport {span} drop; "
                 f"ip saddr {peer_address} tcp sport {span} drop; }}\n"
                 f"  chain output {{ type filter hook output priority -10; ip daddr {peer_address} tcp sport {span} drop; "
                 f"ip daddr {peer_address} tcp dport {span} drop; }}\n}}\n")
        run(hostmaker.nsenter(self._host(host), "nft", "-f", "-"), input=rules, error=BackendError)
        return Cut(host, peer_address, ports, table)

    def end_connections(self, host: str, peer_address: str, ports: tuple[int, int]) -> int:
        # ss -K: SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY) in the host's network namespace; ss lists what it ended.
        out = run(hostmaker.nsenter(self._host(host), "ss", "-K", "-tnH", "dst", peer_address,
                                    f"( sport >= :{ports[0]} and sport <= :{ports[1]} )"), error=BackendError).stdout
        return len([line for line in out.splitlines() if line.strip()])

    def heal(self, cut: Cut) -> None:
        run(hostmaker.nsenter(self._host(cut.host), "nft", "delete", "table", "inet", cut.table),
            check=False, error=BackendError)

    def set_tcp(self, host: str, settings: dict[str, str]) -> dict[str, str]:
        hstate = self._host(host)
        previous = {}
        for key, value in settings.items():
            previous[key] = run(hostmaker.nsenter(hstate, "sysctl", "-n", key), error=BackendError).stdout.strip()
            run(hostmaker.nsenter(hstate, "sysctl", "-q", "-w", f"{key}={value}"), error=BackendError)
        return previous

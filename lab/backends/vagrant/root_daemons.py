"""The root-namespace daemons the Vagrant lab needs: libvirtd and virtlogd (Vagrant talks to them)
and chronyd as the VMs' time server. Used if already running; else started here, their PIDs
recorded, so `down` stops exactly those and nothing else."""
from __future__ import annotations

import socket
from pathlib import Path

from lab.backends.base import Progress
from lab.backends.vagrant.libvirt_objects import Virsh
from lab.backends.vagrant.timeserver import is_program, start_time_server, stop_time_server
from lab.config.lab import LabConfig
from lab.errors import BackendError
from lab.runtime.state import LabState, VagrantRecord
from lab.util.process import alive, run, terminate, wait_until

VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")
LIBVIRTD_SOCK = Path("/run/libvirt/libvirt-sock")


def sock_alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def record(state: LabState) -> VagrantRecord:
    if state.vagrant is None:
        state.vagrant = VagrantRecord()
    return state.vagrant


def ensure_daemons(uri: str, state: LabState, progress: Progress, hide_kvm: bool = False) -> None:
    """hide_kvm: the VMs run under TCG because /dev/kvm does not work here. A libvirtd that sees that
    /dev/kvm probes QEMU under KVM, fails, keeps no capabilities cache and probes again on every
    define and start (1-2 min each under load, seen here); so it gets a mount namespace of its own
    where /dev/kvm is /dev/null, and probes once, for TCG."""
    if not uri.startswith("qemu:///system"):
        return  # a remote libvirt: not ours to start
    if Path("/etc/libvirt/qemu/networks/autostart/default.xml").exists() and not sock_alive(LIBVIRTD_SOCK):
        raise BackendError("libvirt's default NAT network (192.168.122.0/24, a private range) would autostart with "
                           "the root libvirtd; run `virsh net-autostart --disable default` first")
    for name, sock in (("virtlogd", VIRTLOGD_SOCK), ("libvirtd", LIBVIRTD_SOCK)):
        if sock_alive(sock):
            continue
        pidfile = state.layout.dir / f"root-{name}.pid"
        pidfile.unlink(missing_ok=True)
        progress(f"starting {name} in the root namespace (none was running; `down` stops it)"
                 + (" with /dev/kvm hidden (unusable here)" if hide_kvm and name == "libvirtd" else ""))
        argv = [name, "--daemon", "--pid-file", str(pidfile)]
        if hide_kvm and name == "libvirtd" and Path("/dev/kvm").exists():
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind /dev/null /dev/kvm && exec "$@"', "sh", *argv]
        run(argv, timeout=30, error=BackendError)
        if not wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() and sock_alive(sock), 30, 0.2):
            raise BackendError(f"{name} did not come up in the root namespace (no {sock})")
        record(state).daemons[name] = int(pidfile.read_text().strip())
        state.save()


def ensure_time_server(config: LabConfig, state: LabState, progress: Progress) -> None:
    """After `vagrant up` (the runner's address is on the migration network from then on)."""
    daemons = record(state).daemons
    if daemons.get("chronyd") and alive(daemons["chronyd"]):
        return
    net = config.network
    daemons["chronyd"] = start_time_server(state.layout.dir, net.runner_address, net.subnet)
    progress(f"time server for the VMs: chronyd on {net.runner_address}:123 (PID {daemons['chronyd']}; "
             "never sets this machine's clock; `down` stops it)")
    state.save()


def stop_daemons(virsh: Virsh, state: LabState, progress: Progress) -> None:
    started = state.vagrant.daemons if state.vagrant else {}
    if started.get("chronyd") and stop_time_server(started["chronyd"]):
        progress(f"stopped the lab's time server (chronyd, PID {started['chronyd']})")
    for name in ("libvirtd", "virtlogd"):
        pid = started.get(name)
        if not pid or not alive(pid) or not is_program(pid, name):
            continue  # gone, or the PID was reused by something else
        if name == "libvirtd":
            left = virsh("list", "--all", "--name", check=False).stdout.split()
            if left:
                progress(f"leaving the root libvirtd (PID {pid}) running: it still has domains {', '.join(left)}")
                return
        progress(f"stopping the root {name} this lab started (PID {pid})")
        terminate({pid}, grace=15)

"""One embedded lab host: its network namespace and veth, its files, the holder process that keeps
its mount+uts namespaces alive, and its daemons (virtlogd, libvirtd, sshd) started inside them."""
from __future__ import annotations

import select
import shutil
import socket
import subprocess
from pathlib import Path

import libvirt

from lab.backends.embedded import netns
from lab.backends.embedded.host_files import (
    PER_HOST_DIRS, PER_HOST_FILES, copy_libvirt_config, write_hosts, write_libvirtd_conf, write_qemu_conf,
    write_sshd_config,
)
from lab.backends.ssh_client import write_ssh_client_config
from lab.config.lab import LabConfig
from lab.errors import BackendError
from lab.runtime.hosts import prepare_libvirt
from lab.runtime.layout import CACHE_ROOT, LabLayout
from lab.runtime.state import HostState
from lab.stacks.tree import mount_lines, reported, running_mismatch
from lab.util.process import alive, run, wait_until

DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
NS_BRIDGE = "br0"  # inside each host: guests' taps and the host's veth hang here
# libvirtd probes QEMU's capabilities on first use (seconds under TCG). Seeding each
# host's cache from the last lab's is safe: libvirtd re-probes if QEMU or libvirt changed.
CAPS_CACHE = CACHE_ROOT / "libvirt-qemu-capabilities"


def nsenter(host: HostState, *argv: str) -> list[str]:
    """argv run inside the host's namespaces (net, mount, uts), from the root namespace."""
    return ["nsenter", "--target", str(host.holder_pid), "--mount", "--uts", "--net", "--", *argv]


def bridge_mac(address: str) -> str:
    """A host bridge's own MAC: locally administered, from its IPv4 address (unique in the lab, and apart
    from libvirt's 52:54:00 guests and fe:54:00 taps)."""
    return "02:00:" + ":".join(f"{int(octet):02x}" for octet in address.split("."))


def make_network(config: LabConfig, host: HostState, lab_bridge: str) -> None:
    netns.add_netns(host.netns)
    run(["ip", "-n", host.netns, "link", "set", "lo", "up"], error=BackendError)
    netns.add_bridge(NS_BRIDGE, ns=host.netns, mtu=config.network.mtu, address=bridge_mac(host.address))
    netns.add_veth_into(host.veth, host.netns, "eth0", lab_bridge, NS_BRIDGE, config.network.mtu)
    netns.add_address(NS_BRIDGE, f"{host.address}/{config.network.prefixlen}", ns=host.netns)


def make_files(config: LabConfig, layout: LabLayout, host: HostState) -> None:
    hdir = layout.host_dir(host.name)
    for sub in PER_HOST_DIRS:
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("local", "log-libvirt/qemu", "sshd"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    seed_caps_cache(hdir / "cache-libvirt" / "qemu" / "capabilities", host.stack.key)
    copy_libvirt_config(hdir / "etc-libvirt")
    write_libvirtd_conf(hdir / "etc-libvirt", host.host_uuid)
    write_qemu_conf(hdir / "etc-libvirt")
    write_hosts(hdir / "hosts", [(h.name, h.address) for h in config.hosts])
    (hdir / "hostname").write_text(host.name + "\n")
    write_ssh_client_config(hdir / "root-ssh" / "config", layout.key, layout.known_hosts)
    host_key = hdir / "sshd" / "ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", host_key], error=BackendError)
    write_sshd_config(hdir / "sshd" / "sshd_config", host.address, host_key, layout.authorized_keys,
                      hdir / "sshd.pid")
    pub = Path(f"{host_key}.pub").read_text().split()
    with open(layout.known_hosts, "a") as known:
        known.write(f"{host.address},{host.name} {pub[0]} {pub[1]}\n")


def start_holder(host: HostState, binds: list[tuple[Path, str]]) -> None:
    """A `sleep` inside fresh mount+uts namespaces with the host's stack (an overlay over /usr, see
    lab.stacks.tree) and its bind mounts; its PID enters them, so its daemons run that stack."""
    script = "set -e\n" + "".join(f"{line}\n" for line in mount_lines(host.stack))
    script += "".join(f"mount --bind '{src}' '{dst}'\n" for src, dst in binds)
    script += f"hostname {host.name}\necho ready\nexec sleep infinity\n"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
         "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True, env=DAEMON_ENV)
    host.holder_pid = proc.pid
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        err = proc.stderr.read1(4096).decode(errors="replace").strip() if proc.poll() is not None else "timed out"
        raise BackendError(f"{host.name}: could not make its namespaces: {err}")
    proc.stdout.close()
    proc.stderr.close()


def host_binds(layout: LabLayout, host: str) -> list[tuple[Path, str]]:
    hdir = layout.host_dir(host)
    binds = [(hdir / sub, target) for sub, target in PER_HOST_DIRS.items()]
    binds += [(hdir / sub, target) for sub, target in PER_HOST_FILES.items()]
    binds.append((hdir / "local", str(layout.storage_path("local"))))
    return binds


def start_daemons(layout: LabLayout, host: HostState, only: str | None = None) -> None:
    hdir = layout.host_dir(host.name)
    commands = {
        "virtlogd": ["virtlogd", "--daemon", "--pid-file", str(hdir / "virtlogd.pid")],
        "libvirtd": ["libvirtd", "--daemon", "--pid-file", str(hdir / "libvirtd.pid")],
        "sshd": ["/usr/sbin/sshd", "-f", str(hdir / "sshd" / "sshd_config"), "-E", str(hdir / "sshd.log")],
    }
    for name, argv in commands.items():
        if only and name != only:
            continue
        run(nsenter(host, *argv), check=False, env=DAEMON_ENV, timeout=30)
        pid = wait_pidfile(hdir / f"{name}.pid", timeout=15)
        if pid is None:
            raise BackendError(f"{host.name}: {name} did not start (see {hdir}/log-libvirt and `{' '.join(argv)}`)")
        host.pids[name] = pid
        if name == "virtlogd":
            wait_until(lambda: (hdir / "run-libvirt" / "virtlogd-sock").exists(), 10)


def wait_ready(layout: LabLayout, host: HostState) -> None:
    """libvirtd answers (its QEMU capabilities probed) and sshd accepts connections."""
    sock = layout.host_dir(host.name) / "run-libvirt" / "libvirt-sock"
    if not wait_until(sock.exists, 30):
        raise BackendError(f"{host.name}: libvirtd socket did not appear; "
                           f"see {layout.host_dir(host.name)}/log-libvirt/libvirtd.log")
    warm_libvirtd(host.name, sock)
    if not wait_until(lambda: port_open(host.address, 22), 20):
        raise BackendError(f"{host.name}: sshd does not answer on {host.address}:22")


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def warm_libvirtd(name: str, sock: Path) -> None:
    """Make libvirtd probe QEMU now, so `up` returns a lab that answers at once."""
    prepare_libvirt()
    last = ""

    def answers() -> bool:
        nonlocal last
        try:
            conn = libvirt.open(f"qemu:///system?socket={sock}")
            conn.getCapabilities()
            conn.getVersion()
            conn.getDomainCapabilities(None, "x86_64", None, None, 0)
            conn.close()
            return True
        except libvirt.libvirtError as exc:
            last = exc.get_error_message()
            return False

    if not wait_until(answers, 20, interval=0.1):
        raise BackendError(f"{name}: libvirtd does not answer: {last}")


def caps_cache(stack_key: str) -> Path:
    """Probed capabilities are kept per stack: each libvirt writes its own QEMU's."""
    return CAPS_CACHE if stack_key == "system" else CAPS_CACHE / "stacks" / stack_key


def seed_caps_cache(dest: Path, stack_key: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for xml in caps_cache(stack_key).glob("*.xml"):
        shutil.copy2(xml, dest / xml.name)


def save_caps_cache(src: Path, stack_key: str) -> None:
    cache = caps_cache(stack_key)
    cache.mkdir(parents=True, exist_ok=True)
    for xml in src.glob("*.xml"):
        shutil.copy2(xml, cache / xml.name)


def check_stack(layout: LabLayout, host: HostState) -> None:
    """The host's libvirtd reports the versions of the stack it was given, or `up` stops with what it runs."""
    sock = layout.host_dir(host.name) / "run-libvirt" / "libvirt-sock"
    try:
        conn = libvirt.open(f"qemu:///system?socket={sock}")
        qemu, lib = reported(conn.getVersion()), reported(conn.getLibVersion())
        conn.close()
    except libvirt.libvirtError as exc:
        raise BackendError(f"{host.name}: libvirtd does not answer: {exc.get_error_message()}") from None
    mismatch = running_mismatch(host.stack, qemu, lib)
    if mismatch:
        raise BackendError(f"{host.name}: libvirtd reports {mismatch} ({host.stack.origin}); "
                           "check the stack's versions in lab.yaml")


def wait_pidfile(path: Path, timeout: float) -> int | None:
    def pid() -> int | None:
        try:
            value = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        return value if alive(value) else None
    return wait_until(pid, timeout)

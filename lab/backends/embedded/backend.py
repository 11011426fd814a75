"""The embedded lab: N hypervisor hosts on one Linux machine.

Each host is a network namespace plus a mount+uts namespace held open by a
`sleep` holder process, with its own /etc/libvirt, /run/libvirt,
/var/lib/libvirt (bind mounts), its own virtlogd, libvirtd and sshd, and a
veth onto the lab bridge in the root namespace, where the runner sits.
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock

from lab.backends.embedded import netns
from lab.backends.accel import choose_accelerator
from lab.backends import Progress
from lab.backends.embedded.host_files import (
    PER_HOST_DIRS, PER_HOST_FILES, copy_libvirt_config, write_hosts, write_libvirtd_conf,
    write_qemu_conf, write_ssh_client_config, write_ssh_wrapper, write_sshd_config,
)
from lab.config.lab import LabConfig
from lab.errors import BackendError, MissingToolError
from lab.runtime.hosts import forget_connections
from lab.util.process import run
from lab.runtime.state import HostState, LabState, lab_dir, live_users

QEMU = "/usr/bin/qemu-system-x86_64"
REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "libvirtd", "virtlogd", "ssh", "ssh-keygen", "qemu-img")
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
NS_BRIDGE = "br0"
# libvirtd probes QEMU's capabilities on first use (seconds under TCG). Seeding each
# host's cache from the last lab's is safe: libvirtd re-probes if QEMU or libvirt changed.
CAPS_CACHE = Path("/var/cache/kvm-acceptance-lab/libvirt-qemu-capabilities")  # inside each host: guests' taps and the host's veth hang here


def config_digest(config: LabConfig) -> str:
    """What a running lab was made from: its shape only (not settings that don't change what `up` makes)."""
    doc = asdict(config)
    for unrelated in ("source", "hotpatch", "vagrant", "guest", "pairs"):
        doc.pop(unrelated, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddedBackend:
    def __init__(self, config: LabConfig):
        self.config = config
        self.dir = lab_dir(config.name)
        self.bridge = f"{config.name}br"
        self.lock = FileLock(str(self.dir.parent / f".{config.name}.lock"))

    # -- names and paths -------------------------------------------------
    def netns_name(self, host: str) -> str:
        return f"{self.config.name}-{host}"

    def veth_name(self, index: int) -> str:
        return f"{self.config.name}h{index}"

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def ssh_wrapper(self) -> Path:
        return self.dir / "ssh"

    @property
    def shared_path(self) -> Path:
        return self.dir / "shared"

    @property
    def local_path(self) -> Path:
        return self.dir / "local"

    # -- public interface --------------------------------------------------
    def is_up(self) -> bool:
        state = LabState.load(self.config.name)
        return state is not None and self._healthy(state)

    def up(self, progress: Progress, owner_run: str = "") -> None:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = LabState.load(self.config.name)
            if state is not None and state.ready and self._healthy(state):
                if state.config_digest == config_digest(self.config):
                    progress(f"lab {self.config.name} is already up")
                    return
                # Never replace a running lab behind its users' backs (a CLI user holds no lease).
                users = live_users(self.config.name)
                using = f" (in use by runs {', '.join(users)})" if users else ""
                raise BackendError(f"lab {self.config.name!r} is up with another lab.yaml{using}; "
                                   "run `python -m lab down` first, or use another lab name")
            _require_tools()
            if state is not None or self._leftovers():
                progress("clearing what an earlier lab left behind")
                self._down_locked(progress)
            try:
                self._up_locked(progress, owner_run)
            except BaseException as exc:
                # Never leave half a lab: undo whatever got made, then report the first cause.
                progress(f"lab up failed ({exc}); removing what was made")
                self._down_locked(lambda _msg: None)
                raise

    def down(self, progress: Progress) -> None:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self._down_locked(progress)

    def status(self) -> dict:
        state = LabState.load(self.config.name)
        if state is None:
            return {"backend": "embedded", "name": self.config.name, "up": False}
        from lab.runtime.lab import Lab  # local: session imports backends

        return Lab.from_state(self.config, state).describe(healthy=self._healthy(state))

    # -- operating a running lab (used by tests that break a host and restore it) --
    def host_exec(self, host: str, *argv: str, check: bool = True):
        """Run a command inside a host's namespaces (net, mount, uts), from the root namespace."""
        state = LabState.load(self.config.name)
        return run(self._nsenter(state.host(host), *argv), check=check, error=BackendError)

    def stop_daemon(self, host: str, daemon: str) -> None:
        """Stop one of the host's daemons (virtlogd, libvirtd, sshd) by its recorded PID."""
        with self.lock:
            state = LabState.load(self.config.name)
            pid = state.host(host).pids.get(daemon)
            if pid:
                _terminate({pid})
            (self.host_dir(host) / f"{daemon}.pid").unlink(missing_ok=True)

    def start_daemon(self, host: str, daemon: str) -> None:
        """Start a daemon stopped by stop_daemon again, and record its new PID."""
        with self.lock:
            state = LabState.load(self.config.name)
            hstate = state.host(host)
            self._start_daemons(hstate, only=daemon)
            state.save()
            if daemon == "libvirtd":
                _wait_path(self.host_dir(host) / "run-libvirt" / "libvirt-sock", 30)
                _warm_libvirtd(host, self.host_dir(host) / "run-libvirt" / "libvirt-sock")

    # -- up ----------------------------------------------------------------
    def _up_locked(self, progress: Progress, owner_run: str) -> None:
        from lab.guest.image import ensure_image

        cfg = self.config
        started = time.monotonic()
        state = LabState(name=cfg.name, backend="embedded", config_digest=config_digest(cfg),
                         bridge=self.bridge, storage=cfg.storage, owner_run=owner_run)
        self.dir.mkdir(parents=True, exist_ok=True)
        state.save()

        progress("guest image")
        image = ensure_image(progress=progress)
        accel = choose_accelerator(cfg.accelerator, QEMU, image.kernel, image.initrd, image.key)
        state.accelerator, state.accelerator_reason = accel.name, accel.reason
        state.extra["image"] = {"kernel": str(image.kernel), "initrd": str(image.initrd), "key": image.key}
        progress(f"accelerator: {accel.name} ({accel.reason})")

        self._make_keys_and_client_config()
        for path in (self.shared_path, self.local_path, Path("/run/libvirt"), Path("/root/.ssh"), Path("/run/sshd")):
            path.mkdir(parents=True, exist_ok=True)

        progress(f"bridge {self.bridge} {cfg.network.runner_address}/{cfg.network.prefixlen}")
        self._check_subnet_free()
        state.bridge = self.bridge
        state.save()
        netns.add_bridge(self.bridge, mtu=cfg.network.mtu)
        netns.add_address(self.bridge, f"{cfg.network.runner_address}/{cfg.network.prefixlen}")

        for index, spec in enumerate(cfg.hosts):
            host = HostState(name=spec.name, address=spec.address, netns=self.netns_name(spec.name),
                             veth=self.veth_name(index), host_uuid=str(uuid.uuid4()))
            state.hosts.append(host)
            state.save()
            progress(f"{spec.name}: namespaces, {spec.address}")
            self._make_host_network(host)
            self._make_host_files(host)
            self._start_holder(host)
            state.save()
            self._start_daemons(host)
            state.save()
            if os.environ.get("LAB_TEST_FAIL_AFTER_HOST") == host.name:
                # Test hook: no real part fails on demand half-way through `up`, so the
                # rollback test injects this failure after a host is fully made.
                raise BackendError(f"{host.name}: injected failure (LAB_TEST_FAIL_AFTER_HOST)")
        if cfg.storage == "nfs":
            progress(f"nfs: ganesha NFSv3 server at {cfg.network.nfs_address}")
            self._make_nfs_server(state)
        progress("waiting for libvirtd (QEMU capabilities) and sshd on every host")
        errors: list[BaseException] = []

        def ready(host: HostState) -> None:
            try:
                self._wait_ready(host)
            except BaseException as exc:  # noqa: BLE001 - re-raised below in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=ready, args=(h,)) for h in state.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        _save_caps_cache(self.host_dir(state.hosts[0].name) / "cache-libvirt" / "qemu" / "capabilities")
        state.ready = True
        state.save()
        progress(f"lab {cfg.name} up in {time.monotonic() - started:.1f} s")

    def _check_subnet_free(self) -> None:
        out = run(["ip", "-j", "route", "show", "match", self.config.network.runner_address], error=BackendError).stdout
        for route in json.loads(out or "[]"):
            if route.get("dst") != "default":
                raise BackendError(f"network.subnet: {route['dst']} is already routed via {route.get('dev')}; "
                                   "pick another subnet in lab.yaml or remove that interface")

    def _make_keys_and_client_config(self) -> None:
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.config.name}-lab", "-f", str(self.key)],
                error=BackendError)
        self.key.chmod(0o600)
        (self.dir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        write_ssh_client_config(self.dir / "ssh_config", self.key, self.dir / "known_hosts")
        write_ssh_wrapper(self.ssh_wrapper, self.dir / "ssh_config")
        (self.dir / "known_hosts").write_text("")

    def _make_host_network(self, host: HostState) -> None:
        cfg = self.config
        netns.add_netns(host.netns)
        run(["ip", "-n", host.netns, "link", "set", "lo", "up"], error=BackendError)
        netns.add_bridge(NS_BRIDGE, ns=host.netns, mtu=cfg.network.mtu)
        netns.add_veth_into(host.veth, host.netns, "eth0", self.bridge, NS_BRIDGE, cfg.network.mtu)
        netns.add_address(NS_BRIDGE, f"{host.address}/{cfg.network.prefixlen}", ns=host.netns)

    def _make_host_files(self, host: HostState) -> None:
        hdir = self.host_dir(host.name)
        for sub in PER_HOST_DIRS:
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        (hdir / "local").mkdir(exist_ok=True)
        (hdir / "log-libvirt" / "qemu").mkdir(exist_ok=True)
        (hdir / "sshd").mkdir(exist_ok=True)
        _seed_caps_cache(hdir / "cache-libvirt" / "qemu" / "capabilities")
        copy_libvirt_config(hdir / "etc-libvirt")
        write_libvirtd_conf(hdir / "etc-libvirt", host.host_uuid)
        write_qemu_conf(hdir / "etc-libvirt")
        write_hosts(hdir / "hosts", [(h.name, h.address) for h in self.config.hosts])
        (hdir / "hostname").write_text(host.name + "\n")
        write_ssh_client_config(hdir / "root-ssh" / "config", self.key, self.dir / "known_hosts")
        host_key = hdir / "sshd" / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(host_key)], error=BackendError)
        write_sshd_config(hdir / "sshd" / "sshd_config", host.address, host_key, self.dir / "authorized_keys",
                          hdir / "sshd.pid")
        pub = Path(f"{host_key}.pub").read_text().split()
        with open(self.dir / "known_hosts", "a") as known:
            known.write(f"{host.address},{host.name} {pub[0]} {pub[1]}\n")

    @property
    def nfs_export(self) -> Path:
        return self.dir / "nfs-export"

    def _make_nfs_server(self, state: LabState) -> None:
        """A third lab host running rpcbind and ganesha, exporting nfs_export over NFSv3."""
        from lab.backends.embedded.nfs_server import NFS_PORT, ganesha_argv, rpcbind_argv, write_ganesha_conf

        cfg = self.config
        nfs = HostState(name="nfs", address=cfg.network.nfs_address, netns=self.netns_name("nfs"),
                        veth=self.veth_name(len(cfg.hosts)), host_uuid="")
        state.extra["nfs"] = asdict(nfs)
        state.save()
        self._make_host_network(nfs)
        hdir = self.host_dir("nfs")
        for sub in ("run-rpcbind", "ganesha", "ganesha/recovery"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        self.nfs_export.mkdir(parents=True, exist_ok=True)
        write_ganesha_conf(hdir / "ganesha.conf", nfs.address, self.nfs_export, hdir / "ganesha")
        self._start_holder(nfs, binds=[(hdir / "run-rpcbind", "/run/rpcbind")])
        state.extra["nfs"] = asdict(nfs)
        state.save()
        for name, argv in (("rpcbind", rpcbind_argv()), ("ganesha", ganesha_argv(hdir / "ganesha.conf", hdir / "ganesha"))):
            proc = subprocess.Popen(self._nsenter(nfs, *argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=open(hdir / f"{name}.stderr", "w"), start_new_session=True, env=DAEMON_ENV)
            nfs.pids[name] = proc.pid  # nsenter execs the daemon: same PID
            state.extra["nfs"] = asdict(nfs)
            state.save()
            if name == "rpcbind":
                _wait_path(hdir / "run-rpcbind" / "rpcbind.sock", 10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((nfs.address, NFS_PORT), timeout=1):
                    return
            except OSError:
                if any(not _alive(p) for p in nfs.pids.values()):
                    break
                time.sleep(0.1)
        err = (hdir / "ganesha.stderr").read_text().strip().splitlines()[-1:] or ["no output"]
        raise BackendError(f"nfs: ganesha did not serve NFSv3 on {nfs.address}:{NFS_PORT} ({err[0]}); "
                           f"see {hdir}/ganesha/ganesha.log")

    def _start_holder(self, host: HostState, binds: list[tuple[Path, str]] | None = None) -> None:
        hdir = self.host_dir(host.name)
        if binds is None:
            binds = [(hdir / sub, target) for sub, target in PER_HOST_DIRS.items()]
            binds += [(hdir / sub, target) for sub, target in PER_HOST_FILES.items()]
            binds.append((hdir / "local", str(self.local_path)))
        script = "set -e\n" + "".join(f"mount --bind '{src}' '{dst}'\n" for src, dst in binds)
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

    def _nsenter(self, host: HostState, *argv: str) -> list[str]:
        return ["nsenter", "--target", str(host.holder_pid), "--mount", "--uts", "--net", "--", *argv]

    def _start_daemons(self, host: HostState, only: str | None = None) -> None:
        hdir = self.host_dir(host.name)
        commands = {
            "virtlogd": ["virtlogd", "--daemon", "--pid-file", str(hdir / "virtlogd.pid")],
            "libvirtd": ["libvirtd", "--daemon", "--pid-file", str(hdir / "libvirtd.pid")],
            "sshd": ["/usr/sbin/sshd", "-f", str(hdir / "sshd" / "sshd_config")],
        }
        for name, argv in commands.items():
            if only and name != only:
                continue
            subprocess.run(self._nsenter(host, *argv), check=False, env=DAEMON_ENV, capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30)
            pid = _wait_pidfile(hdir / f"{name}.pid", timeout=15)
            if pid is None:
                raise BackendError(f"{host.name}: {name} did not start (see {hdir}/log-libvirt and `{' '.join(argv)}`)")
            host.pids[name] = pid
            if name == "virtlogd":
                _wait_path(hdir / "run-libvirt" / "virtlogd-sock", 10)

    def _wait_ready(self, host: HostState) -> None:
        sock = self.host_dir(host.name) / "run-libvirt" / "libvirt-sock"
        if not _wait_path(sock, 30):
            raise BackendError(f"{host.name}: libvirtd socket did not appear; see {self.host_dir(host.name)}/log-libvirt/libvirtd.log")
        _warm_libvirtd(host.name, sock)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host.address, 22), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise BackendError(f"{host.name}: sshd does not answer on {host.address}:22")

    # -- down --------------------------------------------------------------
    def _leftovers(self) -> bool:
        return bool(netns.list_netns(f"{self.config.name}-") or netns.list_links(f"{self.config.name}h")
                    or netns.link_exists(self.bridge))

    def _down_locked(self, progress: Progress) -> None:
        forget_connections()  # this process's connections die with the daemons
        state = LabState.load(self.config.name)
        names = set(netns.list_netns(f"{self.config.name}-"))
        pids: set[int] = set()
        if state is not None:
            extra_hosts = [HostState(**state.extra["nfs"])] if "nfs" in state.extra else []
            for host in [*state.hosts, *extra_hosts]:
                names.add(host.netns)
                pids.update(p for p in [host.holder_pid, *host.pids.values()] if p)
        for ns in sorted(names):
            # Every process in a lab namespace was started by the lab (daemons, QEMU, ssh sessions).
            pids.update(netns.netns_pids(ns))
        if pids:
            progress(f"stopping {len(pids)} lab processes")
            _terminate(pids)
        for ns in sorted(names):
            progress(f"removing namespace {ns}")
            netns.delete_netns(ns)
        for link in netns.list_links(f"{self.config.name}h"):
            netns.delete_link(link)
        if netns.link_exists(self.bridge):
            progress(f"removing bridge {self.bridge}")
            netns.delete_link(self.bridge)
        # Wait for the kernel to finish tearing down veths before the names are reused.
        deadline = time.monotonic() + 5
        while netns.list_links(f"{self.config.name}h") and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        progress(f"lab {self.config.name} is down")

    def _healthy(self, state: LabState) -> bool:
        if not state.hosts or not netns.link_exists(state.bridge):
            return False
        for host in state.hosts:
            if not netns.netns_exists(host.netns) or not _alive(host.holder_pid):
                return False
            if any(not _alive(pid) for pid in host.pids.values()) or len(host.pids) < 3:
                return False
        nfs = state.extra.get("nfs")
        if nfs and any(not _alive(pid) for pid in [nfs["holder_pid"], *nfs["pids"].values()]):
            return False
        return True


def _warm_libvirtd(name: str, sock: Path) -> None:
    """Make libvirtd probe QEMU now, so `up` returns a lab that answers at once."""
    import libvirt

    from lab.runtime.hosts import _silence_libvirt

    _silence_libvirt()
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = libvirt.open(f"qemu:///system?socket={sock}")
            conn.getCapabilities()
            conn.getVersion()
            conn.getDomainCapabilities(None, "x86_64", None, None, 0)
            conn.close()
            return
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                raise BackendError(f"{name}: libvirtd does not answer: {exc.get_error_message()}") from None
            time.sleep(0.1)


def _seed_caps_cache(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for xml in CAPS_CACHE.glob("*.xml"):
        shutil.copy2(xml, dest / xml.name)


def _save_caps_cache(src: Path) -> None:
    CAPS_CACHE.mkdir(parents=True, exist_ok=True)
    for xml in src.glob("*.xml"):
        shutil.copy2(xml, CAPS_CACHE / xml.name)


def _require_tools() -> None:
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool, path=DAEMON_ENV["PATH"]) is None:
            raise MissingToolError(f"{tool} not found: run `make setup` to install the lab's packages")
    if not Path(QEMU).exists():
        raise MissingToolError(f"{QEMU} not found: run `make setup` (package qemu-system-x86)")
    if os.geteuid() != 0:
        raise MissingToolError("the embedded lab needs root (namespaces, bridges, libvirtd)")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pids: set[int], grace: float = 3.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        _reap()
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _reap()


def _reap() -> None:
    """Collect our own exited children (the holders) so they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wait_pidfile(path: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(path.read_text().strip())
            if _alive(pid):
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return None


def _wait_path(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


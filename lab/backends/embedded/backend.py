"""The embedded lab: N hypervisor hosts on one Linux machine.

Each host is a network namespace plus a mount+uts namespace held open by a
`sleep` holder process, with its own /etc/libvirt, /run/libvirt,
/var/lib/libvirt (bind mounts), its own virtlogd, libvirtd and sshd, and a
veth onto the lab bridge in the root namespace, where the runner sits
(host.py makes one host; this module the lab's lifecycle).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from filelock import FileLock

from lab.backends.accel import choose_accelerator
from lab.backends.base import Progress, config_digest
from lab.backends.embedded import host as hostmaker
from lab.backends.embedded import netns
from lab.backends.embedded.nfs_server import start_nfs_server
from lab.backends.ssh_client import make_key, write_ssh_client_config, write_ssh_wrapper
from lab.config.lab import LabConfig
from lab.errors import BackendError, MissingToolError
from lab.guest.image import ensure_image
from lab.runtime.hosts import forget_connections
from lab.runtime.lab import Lab
from lab.runtime.layout import LabLayout
from lab.runtime.state import HostState, ImageRecord, LabState, live_users
from lab.stacks.resolve import ensure_stacks
from lab.util.process import alive, run, terminate, wait_until

QEMU = "/usr/bin/qemu-system-x86_64"
REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "libvirtd", "virtlogd", "ssh", "ssh-keygen", "qemu-img")


class EmbeddedBackend:
    def __init__(self, config: LabConfig):
        self.config = config
        self.layout = LabLayout(config.name)
        self.bridge = f"{config.name}br"
        self.lock = FileLock(str(self.layout.lock_file))

    def netns_name(self, host: str) -> str:
        return f"{self.config.name}-{host}"

    def veth_name(self, index: int) -> str:
        return f"{self.config.name}h{index}"

    # -- public interface --------------------------------------------------
    def is_up(self) -> bool:
        state = LabState.load(self.config.name)
        return state is not None and self._healthy(state)

    def up(self, progress: Progress, owner_run: str = "") -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = LabState.load_or_clear(self.config.name, progress)
            if state is not None and state.ready and self._healthy(state):
                if state.config_digest == config_digest(self.config):
                    progress(f"lab {self.config.name} is already up")
                    self._refresh_image(state, progress)
                    return
                # Never replace a running lab behind its users' backs (a CLI user holds no lease).
                users = live_users(self.config.name)
                using = f" (in use by runs {', '.join(users)})" if users else ""
                raise BackendError(f"lab {self.config.name!r} is up with another lab.yaml{using}; "
                                   "run `python -m lab down` first, or use another lab name")
            require_tools()
            if state is not None or self._leftovers() or self.layout.state_file.exists():
                progress("clearing what an earlier lab left behind")
                self._down_locked(progress)
            try:
                self._up_locked(progress, owner_run)
            except BaseException as exc:
                # Never leave half a lab: undo whatever got made, then report the first cause.
                progress(f"lab up failed ({exc}); removing what was made")
                self._down_locked(lambda _msg: None)
                raise

    def _refresh_image(self, state: LabState, progress: Progress) -> None:
        """A lab that stays up across an agent change: new guests must boot the current image."""
        image = ensure_image(progress=progress)
        if state.image is None or state.image.key != image.key:
            progress(f"guest image changed to {image.key}: guests started from now on boot it")
            state.image = ImageRecord(kernel=str(image.kernel), initrd=str(image.initrd), key=image.key)
            state.save()

    def down(self, progress: Progress) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self._down_locked(progress)

    def status(self) -> dict:
        state = LabState.load(self.config.name)
        if state is None:
            return {"backend": "embedded", "name": self.config.name, "up": False}
        return Lab.from_state(self.config, state).describe(healthy=self._healthy(state))

    # -- operating a running lab (used by tests that break a host and restore it) --
    def host_exec(self, host: str, *argv: str, check: bool = True):
        """Run a command inside a host's namespaces (net, mount, uts), from the root namespace."""
        state = LabState.load(self.config.name)
        return run(hostmaker.nsenter(state.host(host), *argv), check=check, error=BackendError)

    def stop_daemon(self, host: str, daemon: str) -> None:
        """Stop one of the host's daemons (virtlogd, libvirtd, sshd) by its recorded PID."""
        with self.lock:
            state = LabState.load(self.config.name)
            pid = state.host(host).pids.get(daemon)
            if pid and self._still_ours(pid, {state.host(host).netns}):
                terminate({pid})
            (self.layout.host_dir(host) / f"{daemon}.pid").unlink(missing_ok=True)

    def start_daemon(self, host: str, daemon: str) -> None:
        """Start a daemon stopped by stop_daemon again, and record its new PID."""
        with self.lock:
            state = LabState.load(self.config.name)
            hstate = state.host(host)
            hostmaker.start_daemons(self.layout, hstate, only=daemon)
            state.save()
            if daemon == "libvirtd":
                hostmaker.wait_ready(self.layout, hstate)

    # -- up ----------------------------------------------------------------
    def _up_locked(self, progress: Progress, owner_run: str) -> None:
        cfg, layout = self.config, self.layout
        started = time.monotonic()
        # Stacks first (cached trees, fetched where missing): a version not in the archive or an
        # unreachable mirror stops `up` before anything is made.
        stacks = ensure_stacks(cfg, progress)
        state = LabState(name=cfg.name, backend="embedded", config_digest=config_digest(cfg),
                         storage=cfg.storage, owner_run=owner_run)
        layout.dir.mkdir(parents=True, exist_ok=True)
        state.save()

        progress("guest image")
        image = ensure_image(progress=progress)
        accel = choose_accelerator(cfg.accelerator, QEMU, image.kernel, image.initrd, image.key)
        state.accelerator, state.accelerator_reason = accel.name, accel.reason
        state.image = ImageRecord(kernel=str(image.kernel), initrd=str(image.initrd), key=image.key)
        progress(f"accelerator: {accel.name} ({accel.reason})")

        self._make_keys_and_client_config()
        for path in (layout.storage_path("shared"), layout.storage_path("local"), Path("/run/libvirt"),
                     Path("/root/.ssh"), Path("/run/sshd")):
            path.mkdir(parents=True, exist_ok=True)

        progress(f"bridge {self.bridge} {cfg.network.runner_address}/{cfg.network.prefixlen}")
        self._check_subnet_free()
        state.bridge = self.bridge
        state.save()
        netns.add_bridge(self.bridge, mtu=cfg.network.mtu)
        netns.add_address(self.bridge, f"{cfg.network.runner_address}/{cfg.network.prefixlen}")

        for index, spec in enumerate(cfg.hosts):
            host = HostState(name=spec.name, address=spec.address, netns=self.netns_name(spec.name),
                             veth=self.veth_name(index), host_uuid=str(uuid.uuid4()), stack=stacks[spec.stack])
            state.hosts.append(host)
            state.save()
            progress(f"{spec.name}: namespaces, {spec.address}, stack {host.stack.name} "
                     f"(QEMU {host.stack.qemu}, libvirt {host.stack.libvirt})")
            hostmaker.make_network(cfg, host, self.bridge)
            hostmaker.make_files(cfg, layout, host)
            hostmaker.start_holder(host, hostmaker.host_binds(layout, host.name))
            state.save()
            hostmaker.start_daemons(layout, host)
            state.save()
            if os.environ.get("LAB_TEST_FAIL_AFTER_HOST") == host.name:
                # Test hook: no real part fails on demand half-way through `up`, so the
                # rollback test injects this failure after a host is fully made.
                raise BackendError(f"{host.name}: injected failure (LAB_TEST_FAIL_AFTER_HOST)")
        if cfg.storage == "nfs":
            progress(f"nfs: ganesha NFSv3 server at {cfg.network.nfs_address}")
            start_nfs_server(cfg, state, self.veth_name(len(cfg.hosts)), self.bridge)
        progress("waiting for libvirtd (QEMU capabilities) and sshd on every host")
        self._wait_all_ready(state)
        for host in {h.stack.key: h for h in reversed(state.hosts)}.values():  # the first host of each stack
            hostmaker.check_stack(layout, host)
            hostmaker.save_caps_cache(layout.host_dir(host.name) / "cache-libvirt" / "qemu" / "capabilities",
                                      host.stack.key)
        state.ready = True
        state.save()
        progress(f"lab {cfg.name} up in {time.monotonic() - started:.1f} s")

    def _wait_all_ready(self, state: LabState) -> None:
        errors: list[BaseException] = []

        def ready(host: HostState) -> None:
            try:
                hostmaker.wait_ready(self.layout, host)
            except BaseException as exc:  # noqa: BLE001 - re-raised below in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=ready, args=(h,)) for h in state.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _check_subnet_free(self) -> None:
        out = run(["ip", "-j", "route", "show", "match", self.config.network.runner_address], error=BackendError).stdout
        for route in json.loads(out or "[]"):
            if route.get("dst") != "default":
                raise BackendError(f"network.subnet: {route['dst']} is already routed via {route.get('dev')}; "
                                   "pick another subnet in lab.yaml or remove that interface")

    def _make_keys_and_client_config(self) -> None:
        layout = self.layout
        make_key(layout, f"{self.config.name}-lab")
        layout.authorized_keys.write_text(layout.public_key.read_text())
        write_ssh_client_config(layout.ssh_config, layout.key, layout.known_hosts)
        write_ssh_wrapper(layout.ssh_wrapper, layout.ssh_config)
        layout.known_hosts.write_text("")

    # -- down ----------------------------------------------------------------
    def _leftovers(self) -> bool:
        return bool(netns.list_netns(f"{self.config.name}-") or netns.list_links(f"{self.config.name}h")
                    or netns.link_exists(self.bridge))

    def _down_locked(self, progress: Progress) -> None:
        forget_connections()  # this process's connections die with the daemons
        state = LabState.load_or_clear(self.config.name, progress)
        names = set(netns.list_netns(f"{self.config.name}-"))
        recorded: set[int] = set()
        if state is not None:
            for host in [*state.hosts, *([state.nfs] if state.nfs else [])]:
                names.add(host.netns)
                recorded.update(p for p in [host.holder_pid, *host.pids.values()] if p)
        pids: set[int] = set()
        for ns in sorted(names):
            # Every process in a lab namespace was started by the lab (daemons, QEMU, ssh sessions).
            pids.update(netns.netns_pids(ns))
        # A recorded PID whose process died long ago may be another program's now (PIDs wrap at 32768 here):
        # only one still in a lab namespace, or naming the lab's directory, is still the lab's.
        pids.update(p for p in recorded if self._still_ours(p, names))
        if pids:
            progress(f"stopping {len(pids)} lab processes")
            terminate(pids)
        for ns in sorted(names):
            progress(f"removing namespace {ns}")
            netns.delete_netns(ns)
        for link in netns.list_links(f"{self.config.name}h"):
            netns.delete_link(link)
        if netns.link_exists(self.bridge):
            progress(f"removing bridge {self.bridge}")
            netns.delete_link(self.bridge)
        # Wait for the kernel to finish tearing down veths before the names are reused.
        wait_until(lambda: not netns.list_links(f"{self.config.name}h"), 5)
        if self.layout.dir.exists():
            shutil.rmtree(self.layout.dir, ignore_errors=True)
        progress(f"lab {self.config.name} is down")

    def _still_ours(self, pid: int, namespaces: set[str]) -> bool:
        inodes = set()
        for name in namespaces:
            try:
                inodes.add(os.stat(f"/run/netns/{name}").st_ino)
            except OSError:
                continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                return True
            return str(self.layout.dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False  # gone

    def _healthy(self, state: LabState) -> bool:
        if not state.hosts or not netns.link_exists(state.bridge):
            return False
        for host in state.hosts:
            if not netns.netns_exists(host.netns) or not alive(host.holder_pid):
                return False
            if any(not alive(pid) for pid in host.pids.values()) or len(host.pids) < 3:
                return False
        nfs = state.nfs
        return not (nfs and any(not alive(pid) for pid in [nfs.holder_pid, *nfs.pids.values()]))


def require_tools() -> None:
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool, path=hostmaker.DAEMON_ENV["PATH"]) is None:
            raise MissingToolError(f"{tool} not found: run `make setup` to install the lab's packages")
    if not Path(QEMU).exists():
        raise MissingToolError(f"{QEMU} not found: run `make setup` (package qemu-system-x86)")
    if os.geteuid() != 0:
        raise MissingToolError("the embedded lab needs root (namespaces, bridges, libvirtd)")

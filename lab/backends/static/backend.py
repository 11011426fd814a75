"""The static backend: existing hosts (real machines, or any SSH + libvirt hosts) from an inventory.

`up` creates nothing on the hosts but the guest image files: it checks every
host over SSH and libvirt, copies the guest kernel and initrd where missing,
probes KVM by booting the guest there, and runs preflight on the host pair.
An unready pair is refused with the doctor's table. `down` forgets the lab
(and removes the guest images it copied); the hosts are left as they were.
"""
from __future__ import annotations

import shutil

from filelock import FileLock

from lab.backends import remote
from lab.backends.base import Progress, config_digest
from lab.backends.ssh_client import write_ssh_client_config, write_ssh_wrapper
from lab.config.lab import LabConfig
from lab.runtime.lab import Lab
from lab.runtime.layout import LabLayout
from lab.runtime.state import HostState, LabState

PROBE_S = 12  # how long the KVM probe waits for the guest's first sign of life on a host


class StaticBackend:
    def __init__(self, config: LabConfig):
        self.config = config
        self.layout = LabLayout(config.name)
        self.lock = FileLock(str(self.layout.lock_file))

    def is_up(self) -> bool:
        state = LabState.load(self.config.name)
        return bool(state and state.ready)

    def up(self, progress: Progress, owner_run: str = "") -> None:
        layout = self.layout
        layout.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = LabState.load_or_clear(self.config.name, progress)
            if state and state.ready and state.config_digest == config_digest(self.config):
                progress(f"lab {self.config.name} is already up")
                return
            layout.storage_path("shared").mkdir(parents=True, exist_ok=True)
            layout.known_hosts.touch()
            # Per-host keys come from the inventory; host keys are learnt on first contact.
            write_ssh_client_config(layout.ssh_config, None, layout.known_hosts, accept_new=True)
            write_ssh_wrapper(layout.ssh_wrapper, layout.ssh_config)
            state = LabState(name=self.config.name, backend="static", config_digest=config_digest(self.config),
                             storage=self.config.storage, owner_run=owner_run,
                             hosts=[HostState(name=spec.name, address=spec.address, ssh_user=spec.ssh_user,
                                              ssh_key=spec.ssh_key or "") for spec in self.config.hosts])
            state.save()
            lab = Lab.from_state(self.config, state)
            remote.check_runner_address(self.config)
            for host in lab.hosts:
                progress(f"{host.name}: ssh and libvirt at {host.address}")
                remote.check_host(host)
                state.host(host.name).stack = remote.check_stack(self.config, host)
                host.run(f"mkdir -p {layout.storage_path('shared')} {layout.storage_path('local')}")
            remote.finish_up(self.config, state, PROBE_S, progress)
            state.ready = True
            state.save()
            progress(f"lab {self.config.name} (static, {len(lab.hosts)} hosts) ready; accelerator {state.accelerator}")

    def down(self, progress: Progress) -> None:
        with self.lock:
            state = LabState.load_or_clear(self.config.name, progress)
            if state is not None:
                remote.remove_images(self.config, state)
            shutil.rmtree(self.layout.dir, ignore_errors=True)
            progress(f"lab {self.config.name} forgotten; its hosts are left as they were")

    def status(self) -> dict:
        state = LabState.load(self.config.name)
        if state is None or not state.ready:
            return {"backend": "static", "name": self.config.name, "up": False}
        return Lab.from_state(self.config, state).describe()

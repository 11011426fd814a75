"""The static backend: existing hosts (real machines, or any SSH + libvirt hosts) from an inventory.

`up` creates nothing on the hosts but the guest image files: it checks every
host over SSH and libvirt, copies the guest kernel and initrd where missing,
probes KVM by booting the guest there, and runs preflight on the host pair.
An unready pair is refused with the doctor's table. `down` forgets the lab
(and removes the guest images it copied); the hosts are left as they were.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from filelock import FileLock

from lab.backends import Progress
from lab.backends.embedded.backend import config_digest
from lab.backends.embedded.host_files import write_ssh_client_config, write_ssh_wrapper
from lab.config.lab import LabConfig
from lab.errors import BackendError
from lab.runtime.state import HostState, LabState, lab_dir

IMAGE_DIR = "/var/lib/kvm-acceptance-lab/images"


class StaticBackend:
    probe_s = 12  # how long the KVM probe waits for the guest's first sign of life on a host
    def __init__(self, config: LabConfig):
        self.config = config
        self.dir = lab_dir(config.name)
        self.lock = FileLock(str(self.dir.parent / f".{config.name}.lock"))

    def is_up(self) -> bool:
        state = LabState.load(self.config.name)
        return bool(state and state.ready)

    def up(self, progress: Progress, owner_run: str = "") -> None:
        from lab.guest.image import ensure_image

        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = LabState.load(self.config.name)
            if state and state.ready and state.config_digest == config_digest(self.config):
                progress(f"lab {self.config.name} is already up")
                return
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "shared").mkdir(exist_ok=True)
            known = self.dir / "known_hosts"
            known.touch()
            write_ssh_client_config(self.dir / "ssh_config", Path("/dev/null"), known)
            # Per-host keys come from the inventory: -i on the command line, accept-new for the lab's known_hosts.
            text = (self.dir / "ssh_config").read_text().replace("  IdentityFile /dev/null\n", "")
            (self.dir / "ssh_config").write_text(text.replace("StrictHostKeyChecking yes", "StrictHostKeyChecking accept-new"))
            write_ssh_wrapper(self.dir / "ssh", self.dir / "ssh_config")
            state = LabState(name=self.config.name, backend="static", config_digest=config_digest(self.config),
                             storage=self.config.storage, owner_run=owner_run)
            for spec in self.config.hosts:
                state.hosts.append(HostState(name=spec.name, address=spec.address, netns="", veth="", host_uuid="",
                                             ssh_user=spec.ssh_user, ssh_key=spec.ssh_key or ""))
            state.save()
            from lab.runtime.lab import Lab

            lab = Lab.from_state(self.config, state)
            self._check_runner_address()
            for host in lab.hosts:
                progress(f"{host.name}: ssh and libvirt at {host.address}")
                self._check_host(host)
                host.run(f"mkdir -p {self.dir}/shared {self.dir}/local")
            image = ensure_image(progress=progress)
            remote = f"{IMAGE_DIR}/{image.key}"
            for host in lab.hosts:
                self._copy_image(host, image, remote, progress)
            state.extra["image"] = {"kernel": f"{remote}/vmlinuz", "initrd": f"{remote}/initrd.img", "key": image.key}
            accel, reason = self._accelerator(lab.hosts, remote, progress)
            state.accelerator, state.accelerator_reason = accel, reason
            state.save()
            self._preflight(Lab.from_state(self.config, state), progress)
            state.ready = True
            state.save()
            progress(f"lab {self.config.name} (static, {len(lab.hosts)} hosts) ready; accelerator {accel}")

    def _check_runner_address(self) -> None:
        """Guests send heartbeats to the runner: its address must be one of this machine's."""
        import json

        out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True).stdout
        mine = {a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])}
        if self.config.network.runner_address not in mine:
            raise BackendError(f"network.runner_address: {self.config.network.runner_address} is not an address of "
                               "this machine; set it to the runner's address on the hosts' network")

    def _check_host(self, host) -> None:
        proc = host.run("uname -r", check=False, timeout=30)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise BackendError(f"{host.name} ({host.address}): ssh as {host.ssh_user} failed: {last}; "
                               "check hosts[].address, ssh_user and ssh_key in lab.yaml")
        host.connect(fresh=True)

    def _copy_image(self, host, image, remote: str, progress: Progress) -> None:
        if host.run(f"test -s {remote}/vmlinuz && test -s {remote}/initrd.img", check=False).returncode == 0:
            return
        progress(f"{host.name}: copying the guest image to {remote}")
        host.run(f"mkdir -p {remote}")
        for local, name in ((image.kernel, "vmlinuz"), (image.initrd, "initrd.img")):
            with open(local, "rb") as fh:
                proc = subprocess.run(host.ssh_argv(f"cat > {shlex.quote(remote)}/{name}.tmp && "
                                                    f"mv {shlex.quote(remote)}/{name}.tmp {shlex.quote(remote)}/{name}"),
                                      stdin=fh, capture_output=True, timeout=300)
            if proc.returncode != 0:
                raise BackendError(f"{host.name}: copying the guest image failed: {proc.stderr.decode().strip()[-200:]}")

    def _accelerator(self, hosts, remote: str, progress: Progress) -> tuple[str, str]:
        """Boot the guest under -accel kvm on every host; KVM only if all of them show a sign of life."""
        if self.config.accelerator == "tcg":
            return "tcg", "lab.yaml asks for tcg"
        failures = []
        for host in hosts:
            progress(f"{host.name}: probing KVM by booting the guest")
            cmd = (f"timeout {self.probe_s} qemu-system-x86_64 -accel kvm -m 128 -nographic -nodefaults -no-reboot "
                   f"-serial stdio -kernel {remote}/vmlinuz -initrd {remote}/initrd.img "
                   f"-append 'console=ttyS0 lab.probe=1 panic=-1 quiet' 2>&1 | grep -m1 -q LAB-AGENT-READY")
            if host.run(cmd, check=False, timeout=self.probe_s + 30).returncode != 0:
                failures.append(host.name)
        if failures and self.config.accelerator == "kvm":
            raise BackendError(f"accelerator: kvm requested but the guest did not boot under KVM on {', '.join(failures)}")
        if failures:
            return "tcg", f"KVM probe: no sign of life from the guest on {', '.join(failures)} in {self.probe_s} s; using TCG"
        return "kvm", "KVM booted the guest on every host"

    def _preflight(self, lab, progress: Progress) -> None:
        """Every host pair of the pool must be ready; the first unready one is refused with the doctor's table."""
        from lab.preflight.checks import FAIL, context_for, run_preflight, table

        for src, dst in lab.pairs:
            results = run_preflight(context_for(lab, src.name, dst.name))
            failed = [r for r in results if r.status == FAIL]
            if failed:
                progress(f"preflight {src.name} -> {dst.name}:\n" + table(results))
                raise BackendError(f"hosts {src.name} -> {dst.name} are not ready for migration: "
                                   f"{', '.join(r.name for r in failed)} failed (table above; "
                                   f"`python -m lab doctor --src {src.name} --dst {dst.name}`)")
            progress(f"preflight {src.name} -> {dst.name}: ready")

    def down(self, progress: Progress) -> None:
        with self.lock:
            state = LabState.load(self.config.name)
            if state and state.ready and "image" in state.extra:
                from lab.runtime.lab import Lab

                for host in Lab.from_state(self.config, state).hosts:
                    host.run(f"rm -rf {IMAGE_DIR}/{state.extra['image']['key']}", check=False)
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)
            progress(f"lab {self.config.name} forgotten; its hosts are left as they were")

    def status(self) -> dict:
        state = LabState.load(self.config.name)
        if state is None or not state.ready:
            return {"backend": "static", "name": self.config.name, "up": False}
        from lab.runtime.lab import Lab

        return Lab.from_state(self.config, state).describe()

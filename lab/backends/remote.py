"""What the backends with remote hosts (static, Vagrant) share: reach the hosts, put the guest image
there, choose the accelerator by booting the guest, and refuse an unready host pair.

Used by composition: each backend makes the hosts its own way, then calls `finish_up`.
"""
from __future__ import annotations

import json
import shlex

from lab.backends.base import Progress
from lab.config.lab import LabConfig
from lab.errors import BackendError, LabError
from lab.guest.image import GuestImage, ensure_image
from lab.preflight import FAIL, context_for, run_preflight, table
from lab.runtime.hosts import Host
from lab.runtime.lab import Lab
from lab.runtime.layout import REMOTE_IMAGE_DIR
from lab.runtime.state import ImageRecord, LabState, StackRecord
from lab.stacks.archive import upstream
from lab.stacks.tree import reported, running_mismatch
from lab.util.process import run


def check_runner_address(config: LabConfig) -> None:
    """Guests send heartbeats to the runner: its address must be one of this machine's."""
    out = run(["ip", "-j", "-4", "addr"], error=BackendError).stdout
    mine = {a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])}
    if config.network.runner_address not in mine:
        raise BackendError(f"network.runner_address: {config.network.runner_address} is not an address of "
                           "this machine; set it to the runner's address on the hosts' network")


def check_host(host: Host) -> None:
    """SSH and libvirt answer; one line naming the host and the fix when not."""
    proc = host.run("uname -r", check=False, timeout=30)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise BackendError(f"{host.name} ({host.address}): ssh as {host.ssh_user} failed: {last}; "
                           "check hosts[].address, ssh_user and ssh_key in lab.yaml")
    host.connect(fresh=True)


def check_stack(config: LabConfig, host: Host) -> StackRecord:
    """A real host runs what its lab.yaml stack says (the playbook installs it; the lab installs nothing there):
    its libvirtd must report the stack's QEMU and libvirt versions, else one line says what runs and the fix."""
    name = config.host(host.name).stack
    if name == "system":
        return StackRecord()
    spec = config.stacks[name]
    stack = StackRecord(name=name, source=spec.source, qemu=spec.qemu or "", libvirt=spec.libvirt or "",
                        qemu_upstream=upstream(spec.qemu) if spec.qemu else "",
                        libvirt_upstream=upstream(spec.libvirt) if spec.libvirt else "",
                        origin=f"installed on the host ({spec.archive_suite})")
    conn = host.connect()
    mismatch = running_mismatch(stack, reported(conn.getVersion()), reported(conn.getLibVersion()))
    if mismatch:
        raise BackendError(f"{host.name}: runs {mismatch}: install the stack with the playbook (role stack; "
                           "`python -m lab.stacks --lab-config LAB.yaml pins` prints its lab_stack host vars) "
                           "or name the stack the host runs in lab.yaml")
    return stack


def copy_image(host: Host, image: GuestImage, remote: str, progress: Progress) -> None:
    if host.run(f"test -s {remote}/vmlinuz && test -s {remote}/initrd.img", check=False).returncode == 0:
        return
    progress(f"{host.name}: copying the guest image to {remote}")
    host.run(f"mkdir -p {remote}")
    for local, name in ((image.kernel, "vmlinuz"), (image.initrd, "initrd.img")):
        target = f"{shlex.quote(remote)}/{name}"
        run(host.ssh_argv(f"cat > {target}.tmp && mv {target}.tmp {target}"), input=local.read_bytes(),
            text=False, timeout=300, error=BackendError, what=f"{host.name}: copying the guest image")


def probe_accelerator(config: LabConfig, hosts: tuple[Host, ...], remote: str, probe_s: int,
                      progress: Progress) -> tuple[str, str]:
    """Boot the guest under -accel kvm on every host; KVM only if all of them show a sign of life."""
    if config.accelerator == "tcg":
        return "tcg", "lab.yaml asks for tcg"
    failures = []
    for host in hosts:
        progress(f"{host.name}: probing KVM by booting the guest")
        cmd = (f"timeout {probe_s} qemu-system-x86_64 -accel kvm -m 128 -nographic -nodefaults -no-reboot "
               f"-serial stdio -kernel {remote}/vmlinuz -initrd {remote}/initrd.img "
               f"-append 'console=ttyS0 lab.probe=1 panic=-1 quiet' 2>&1 | grep -m1 -q LAB-AGENT-READY")
        if host.run(cmd, check=False, timeout=probe_s + 30).returncode != 0:
            failures.append(host.name)
    if failures and config.accelerator == "kvm":
        raise BackendError(f"accelerator: kvm requested but the guest did not boot under KVM on {', '.join(failures)}")
    if failures:
        return "tcg", f"KVM probe: no sign of life from the guest on {', '.join(failures)} in {probe_s} s; using TCG"
    return "kvm", "KVM booted the guest on every host"


def preflight_gate(lab: Lab, progress: Progress, retry_timeouts: bool = False) -> None:
    """Every host pair of the pool must be ready; the first unready one is refused with the doctor's table.

    retry_timeouts: a check that could not run because its command timed out says nothing about the
    hosts; on slow hosts (TCG VMs, all checks at once) those are run once more, alone."""
    for src, dst in lab.pairs:
        results = run_preflight(context_for(lab, src.name, dst.name))
        failed = [r for r in results if r.status == FAIL]
        if failed and retry_timeouts and all("timed out" in r.seen for r in failed):
            progress(f"preflight {src.name} -> {dst.name}: {', '.join(r.name for r in failed)} timed out "
                     "(no verdict); running them once more")
            again = {r.name: r for r in run_preflight(context_for(lab, src.name, dst.name), [r.name for r in failed])}
            results = [again.get(r.name, r) for r in results]
            failed = [r for r in results if r.status == FAIL]
        if failed:
            progress(f"preflight {src.name} -> {dst.name}:\n" + table(results))
            raise BackendError(f"hosts {src.name} -> {dst.name} are not ready for migration: "
                               f"{', '.join(r.name for r in failed)} failed (table above; "
                               f"`python -m lab doctor --src {src.name} --dst {dst.name}`)")
        progress(f"preflight {src.name} -> {dst.name}: ready")


def finish_up(config: LabConfig, state: LabState, probe_s: int, progress: Progress,
              explain_accelerator=lambda accel, reason: reason) -> None:
    """The common tail of `up` once the hosts answer: guest image, accelerator, preflight gate."""
    lab = Lab.from_state(config, state)
    image = ensure_image(progress=progress)
    remote = f"{REMOTE_IMAGE_DIR}/{image.key}"
    for host in lab.hosts:
        copy_image(host, image, remote, progress)
    state.image = ImageRecord(kernel=f"{remote}/vmlinuz", initrd=f"{remote}/initrd.img", key=image.key)
    accel, reason = probe_accelerator(config, lab.hosts, remote, probe_s, progress)
    state.accelerator, state.accelerator_reason = accel, explain_accelerator(accel, reason)
    state.save()
    preflight_gate(Lab.from_state(config, state), progress)


def remove_images(config: LabConfig, state: LabState) -> None:
    """`down` on remote hosts: only the guest image files the lab copied there."""
    if not (state.ready and state.image):
        return
    for host in Lab.from_state(config, state).hosts:
        try:
            host.run(f"rm -rf {REMOTE_IMAGE_DIR}/{shlex.quote(state.image.key)}", check=False)
        except LabError:
            pass  # an unreachable host keeps its copy; nothing else of the lab is there

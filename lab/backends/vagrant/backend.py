"""The Vagrant backend: two hypervisor VMs (plus an NFS server VM when chosen) on this machine's libvirt.

`up`:
1. the root-namespace libvirtd (and virtlogd) Vagrant talks to (root_daemons.py);
2. the lab's key pair and SSH client files (same paths on the runner and the VMs);
3. a storage pool of the lab's own (box volume and VM disks), so `down` can remove all;
4. the libvirt driver: kvm (host-passthrough, nested) where KVM boots the lab guest
   on this machine, else qemu (TCG) - lab.yaml `vagrant.driver` may force one;
5. lab.yaml rendered into the Vagrant work dir (render.py);
6. `vagrant up --no-provision`, each VM's progress shown as it comes up;
7. `vagrant provision` from the last VM: provision/site.yml for all VMs at once;
8. SSH + libvirt over the migration network, clocks, the guest image copied, the guests'
   accelerator measured inside the VMs (inner.py), preflight as a gate (lab.backends.remote);
9. the provisioned VMs cached (cache.py). When the cache fits (same lab.yaml, box, playbook),
   steps 6-8 start its VMs instead: no provisioning, and of the measuring only this boot's fill
   speed (the accelerator chosen when the cache was made is kept).

`down`: `vagrant destroy`, then whatever of the lab is still in libvirt (domains with
the lab's prefix, its two networks, its pool and volumes), then the daemons it started.
"""
from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
from filelock import FileLock

from lab.backends import remote
from lab.backends.accel import choose_accelerator
from lab.backends.base import Progress, config_digest
from lab.backends.ssh_client import make_key, write_ssh_client_config, write_ssh_wrapper
from lab.backends.vagrant import box as boxmod
from lab.backends.vagrant import cache, inner, root_daemons
from lab.backends.vagrant.driver import VagrantLab, ansible_strategy, drop_stale_box, require_vagrant
from lab.backends.vagrant.libvirt_objects import Virsh, ensure_pool, remove_leftovers
from lab.backends.vagrant.render import machines, settings_document, shared_mount, write_work_dir
from lab.backends.vagrant.timeserver import wait_for_clock
from lab.config.lab import LabConfig
from lab.config.vagrant import check_lab
from lab.errors import BackendError, LabError, MissingToolError
from lab.guest.image import GuestImage, ensure_image
from lab.runtime.layout import REMOTE_IMAGE_DIR
from lab.runtime.hosts import Host
from lab.runtime.lab import Lab
from lab.runtime.layout import LabLayout
from lab.runtime.state import HostState, ImageRecord, LabState, VagrantRecord
from lab.stacks.pins import playbook_stacks
from lab.util.process import run


def host_uuid(host: Host) -> str:
    """The host UUID libvirt reports (from the VM's machine-id, see the hypervisor role); '' if unreadable."""
    try:
        return ET.fromstring(host.connect().getCapabilities()).findtext("./host/uuid") or ""
    except (libvirt.libvirtError, LabError, ET.ParseError):
        return ""  # informational only


def show(line: str, progress: Progress, ansible: bool = False) -> None:
    """Vagrant's per-VM lines (==> hv1: ...) and Ansible's task headers, one line each."""
    text = line.strip()
    if not text:
        return
    if ansible:
        if text.startswith(("TASK [", "PLAY [", "RUNNING HANDLER [")):
            progress("  " + text.rstrip("*").strip())
        elif text.startswith(("changed:", "fatal:", "failed:")) or " : ok=" in text or "ERROR" in text:
            progress("    " + text[:200])
        return
    if text.startswith("==>") or "Error" in text or "error" in text:
        progress("  " + text[:200])


class VagrantBackend:
    def __init__(self, config: LabConfig):
        self.config = config
        self.spec = check_lab(config)
        self.layout = LabLayout(config.name)
        self.lock = FileLock(str(self.layout.lock_file))
        self.work = Path(self.spec.vagrant_dir) if self.spec.vagrant_dir else self.layout.vagrant_work
        self.virsh = Virsh(self.spec.libvirt_uri)
        self.prefix = f"{config.name}-"

    def _vagrant(self) -> VagrantLab:
        return VagrantLab(self.work, self.work / "settings.json")

    def _names(self) -> list[str]:
        return [m.name for m in machines(self.config, self.spec)]

    def is_up(self) -> bool:
        state = LabState.load(self.config.name)
        return bool(state and state.ready)

    # -- up ------------------------------------------------------------------------------------------
    def up(self, progress: Progress, owner_run: str = "") -> None:
        require_vagrant()
        if self.spec.provision and not shutil.which("ansible-playbook"):
            raise MissingToolError("ansible-playbook not found: apt-get install ansible-core ansible (Debian 12)")
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = LabState.load_or_clear(self.config.name, progress)
            digest = config_digest(self.config)
            if state and state.ready and state.config_digest == digest and self._vms_running():
                progress(f"lab {self.config.name} is already up")
                return
            t0 = time.monotonic()
            # Before anything is made: a stack version the archive lacks, or no mirror, leaves no half lab.
            stacks = playbook_stacks(self.config, progress) if self.spec.provision else {}
            daemons = self._daemons_to_keep(state, digest, progress)
            self.layout.dir.mkdir(parents=True, exist_ok=True)
            record = VagrantRecord(daemons=daemons, work_dir=str(self.work), prefix=self.prefix,
                                   networks=[f"{self.config.name}-mgmt", f"{self.config.name}-mig"], vms=self._names())
            state = LabState(name=self.config.name, backend="vagrant", config_digest=digest,
                             storage=self.config.storage, owner_run=owner_run, vagrant=record,
                             hosts=[HostState(name=s.name, address=s.address) for s in self.config.hosts])
            state.save()
            timings = record.timings
            image = ensure_image(progress=progress)
            record.driver, record.driver_reason = self._driver(image, progress)
            state.save()
            progress(f"VMs run with libvirt driver {record.driver} ({record.driver_reason})")
            root_daemons.ensure_daemons(self.spec.libvirt_uri, state, progress, hide_kvm=record.driver == "qemu")
            ensure_pool(self.virsh, self.config.name, progress)
            # config_digest leaves `vagrant:` out (it names a lab's shape); the VMs depend on it too.
            key = cache.cache_key(digest + self.spec.model_dump_json(), self._box_stamp(), record.driver)
            warm = cache.usable(self.config.name, key, self._names()) if self.spec.keep_provisioned else None
            if warm:
                self.work.mkdir(parents=True, exist_ok=True)
                cache.restore(self.virsh, lab=self.config.name, vms=self._names(), work=self.work, progress=progress)
                record.resumed_from = str(cache.cache_dir(self.config.name))
                state.save()
            self._make_keys()
            doc = settings_document(self.config, self.spec, driver=record.driver, lab_dir=self.layout.dir,
                                    work_dir=self.work, public_key=self.layout.public_key.read_text().strip(),
                                    box_url=self._box_url(progress), stacks=stacks)
            write_work_dir(self.work, doc)
            timings["prepare_s"] = round(time.monotonic() - t0, 1)
            with self._forget_cache_on_failure(warm, progress):
                vg = self._vagrant()
                t = time.monotonic()
                progress(f"vagrant up ({', '.join(self._names())}) in {self.work}")
                for line in vg.up_lines(provision=False, parallel=True):
                    show(line, progress)
                timings["vagrant_up_s"] = round(time.monotonic() - t, 1)
                self._check_running(vg, progress)
            root_daemons.ensure_time_server(self.config, state, progress)
            if self.spec.provision and not warm:
                t = time.monotonic()
                last = self._names()[-1]
                progress(f"provisioning every VM with provision/site.yml (from {last}; Ansible strategy "
                         f"{ansible_strategy()})")
                failed_tasks: list[str] = []  # "fatal: [hv2]: FAILED! => {...}": what the error line must name
                try:
                    for line in vg.provision_lines(last):
                        show(line, progress, ansible=True)
                        if " : ok=" in line:
                            record.provision_recap.append(line.strip())
                        elif line.lstrip().startswith("fatal:"):
                            failed_tasks.append(line.strip())
                except BackendError:
                    if not failed_tasks:
                        raise
                    raise BackendError(f"provisioning failed: {failed_tasks[0][:800]} (the whole output is above; "
                                       "`python -m lab up` again resumes)") from None
                timings["provision_s"] = round(time.monotonic() - t, 1)
                state.save()
            t = time.monotonic()
            self._after_provision(state, progress, warm)
            timings["hosts_ready_s"] = round(time.monotonic() - t, 1)
            if self.spec.keep_provisioned and self.spec.provision and not warm:
                timings["cache_save_s"] = self._save_cache(key, state, progress)
            timings["total_s"] = round(time.monotonic() - t0, 1)
            state.ready = True
            state.save()
            how = f"from the provisioned VMs in {record.resumed_from}" if warm else "made and provisioned"
            progress(f"lab {self.config.name} (vagrant, {len(self.config.hosts)} hypervisor VMs, driver "
                     f"{record.driver}, {how}) ready in {timings['total_s']:.0f} s; accelerator {state.accelerator}")

    def _daemons_to_keep(self, state: LabState | None, digest: str, progress: Progress) -> dict[str, int]:
        """Resume the same lab stopped half-way; else clear what an earlier lab left (but its daemons)."""
        vagrant_dir = self.work.joinpath(".vagrant").exists()
        if state and state.config_digest == digest and vagrant_dir:
            # vagrant up and the playbook are idempotent: carry on rather than start over (minutes under TCG).
            progress(f"lab {self.config.name}: resuming the earlier, unfinished `up` (same lab.yaml)")
            return dict(state.vagrant.daemons) if state.vagrant else {}
        if state is not None or vagrant_dir:
            progress(f"lab {self.config.name}: clearing what an earlier lab left")
            self._down_locked(progress, keep_daemons=True)
            kept = LabState.load(self.config.name)  # only the daemons' record survives
            return dict(kept.vagrant.daemons) if kept and kept.vagrant else {}
        return {}

    def _driver(self, image: GuestImage, progress: Progress) -> tuple[str, str]:
        """kvm (host-passthrough, nested) where KVM really boots a guest here, else qemu (TCG)."""
        if self.spec.driver != "auto":
            return self.spec.driver, f"lab.yaml vagrant.driver: {self.spec.driver}"
        if self.config.accelerator == "tcg":
            return "qemu", "lab.yaml accelerator: tcg"
        progress("choosing the VMs' libvirt driver: probing KVM on this machine")
        accel = choose_accelerator("auto", "/usr/bin/qemu-system-x86_64", image.kernel, image.initrd, image.key)
        return ("kvm" if accel.name == "kvm" else "qemu"), accel.reason

    @contextmanager
    def _forget_cache_on_failure(self, warm: dict | None, progress: Progress):
        try:
            yield
        except LabError as exc:
            if not warm:
                raise
            cache.clear(self.config.name, progress)
            raise BackendError(f"{exc} (while starting the cached provisioned VMs: cache cleared, so the next "
                               "`up` makes and provisions them afresh)") from None

    def _box_stamp(self) -> str:
        """Names the box's build (a rebuilt box invalidates the provisioned-VM cache)."""
        url = self.spec.box_url
        if url and url.startswith("/"):
            built = boxmod.paths(self.spec.box, Path(url).parent).manifest
            return built.read_text() if built.exists() else f"{url}:{Path(url).stat().st_mtime_ns}"
        return f"{self.spec.box} {url or ''}"

    def _save_cache(self, key: str, state: LabState, progress: Progress) -> float:
        record = state.vagrant
        extra = {"inner": record.inner, "accelerator": state.accelerator,
                 "accelerator_reason": state.accelerator_reason, "fill_mibs": state.fill_mibs,
                 "made_by_up": dict(record.timings)}
        try:
            return cache.save(self.virsh, lab=self.config.name, key=key, prefix=self.prefix,
                              vms={m.name: m.address for m in machines(self.config, self.spec)}, work=self.work,
                              ssh_config=self.layout.ssh_config, extra=extra, progress=progress)
        except LabError as exc:  # the lab is up; only the next `up` will be slower
            progress(f"provisioned VMs not cached: {exc}")
            return 0.0

    def _box_url(self, progress: Progress) -> str | None:
        """A locally built box is added from its file; a missing one is built only when asked (see docs)."""
        url = self.spec.box_url
        if url and url.startswith("/") and not Path(url).exists():
            raise BackendError(f"vagrant.box_url: {url} does not exist; build it with "
                               f"`python -m lab.backends.vagrant.box build --name {self.spec.box}`")
        if url and url.startswith("/"):
            drop_stale_box(self.spec.box, Path(url), progress)
        return url

    def _make_keys(self) -> None:
        layout = self.layout
        make_key(layout, f"kvm-acceptance-{self.config.name}")
        layout.known_hosts.touch()
        # The VMs may run under TCG: an SSH login there costs seconds, so the runner keeps one
        # connection per VM open and multiplexes commands over it (`down` closes them).
        write_ssh_client_config(layout.ssh_config, layout.key, layout.known_hosts, multiplex_dir=layout.dir)
        write_ssh_wrapper(layout.ssh_wrapper, layout.ssh_config)

    def _close_ssh_masters(self, state: LabState) -> None:
        if self.layout.ssh_config.exists():
            for h in state.hosts:
                run(["ssh", "-F", self.layout.ssh_config, "-O", "exit", f"{h.ssh_user}@{h.address}"],
                    check=False, timeout=15)

    def _vms_running(self) -> bool:
        if not (self.work / ".vagrant").exists():
            return False
        try:
            states = self._vagrant().status()
        except LabError:
            return False
        return all(states.get(n) == "running" for n in self._names())

    def _check_running(self, vg: VagrantLab, progress: Progress) -> None:
        states = vg.status()
        progress("VMs: " + ", ".join(f"{n} {s}" for n, s in states.items()))
        bad = [n for n in self._names() if states.get(n) != "running"]
        if bad:
            raise BackendError(f"vagrant up left {', '.join(bad)} not running (`vagrant status` in {self.work})")

    def _after_provision(self, state: LabState, progress: Progress, warm: dict | None) -> None:
        """Reach the hosts, wait for their clocks, the guest image, the guests' accelerator, preflight."""
        if not self.layout.known_hosts.read_text().strip():
            raise BackendError("provisioning wrote no host keys to the lab's known_hosts (is provision: false?)")
        remote.check_runner_address(self.config)
        lab = Lab.from_state(self.config, state)
        for host, hstate in zip(lab.hosts, state.hosts):
            progress(f"{host.name}: ssh and libvirt at {host.address} (migration network)")
            remote.check_host(host)
            hstate.host_uuid = host_uuid(host)
            hstate.stack = remote.check_stack(self.config, host)
        state.save()
        for host in lab.hosts:
            offset = wait_for_clock(host, self.config.network.runner_address)
            progress(f"{host.name}: clock on the runner's time server (offset {offset * 1000:.2f} ms)")
        mount = shared_mount(self.config, self.layout.dir) if self.config.storage != "local" else ""
        if warm and mount:
            for host in lab.hosts:
                # Booted together, a hypervisor may have tried its NFS mount before the server was up.
                host.run(f"mountpoint -q {mount} || mount {mount}", timeout=180)
        if warm:
            for src, dst in lab.pairs:
                # First contact after boot: SSH into a TCG VM and its libvirtd's start took longer than
                # preflight's 30 s p2p check allows (seen here); a fresh lab makes it while measuring.
                src.run(f"virsh -c '{dst.libvirt_uri}' hostname", check=False, timeout=300)
        image = ensure_image(progress=progress)
        remote_dir = f"{REMOTE_IMAGE_DIR}/{image.key}"
        for host in lab.hosts:
            remote.copy_image(host, image, remote_dir, progress)
        state.image = ImageRecord(kernel=f"{remote_dir}/vmlinuz", initrd=f"{remote_dir}/initrd.img", key=image.key)
        state.save()
        record = state.vagrant
        lab = Lab.from_state(self.config, state)
        where = "nested KVM" if record.driver == "kvm" else f"the VMs under TCG: {record.driver_reason}"
        state.accelerator, state.accelerator_reason, record.inner, record.fill_check = inner.for_this_boot(
            lab, self.config.accelerator, warm, progress, where=where)
        state.fill_mibs = record.fill_check["fill_mibs"]
        state.save()
        progress(f"guests run under {state.accelerator}: {state.accelerator_reason}")
        progress(f"this boot's fill: {inner.fill_line(record.fill_check)}")
        remote.preflight_gate(Lab.from_state(self.config, state), progress, retry_timeouts=True)

    # -- down ----------------------------------------------------------------------------------------
    def down(self, progress: Progress) -> None:
        with self.lock:
            self._down_locked(progress)

    def _down_locked(self, progress: Progress, keep_daemons: bool = False) -> None:
        state = LabState.load_or_clear(self.config.name, progress)
        scratch = state or LabState(name=self.config.name, backend="vagrant", config_digest="")
        work = Path(scratch.vagrant.work_dir) if scratch.vagrant and scratch.vagrant.work_dir else self.work
        uri_ok = True
        if self.spec.libvirt_uri.startswith("qemu:///system") and not root_daemons.sock_alive(root_daemons.LIBVIRTD_SOCK):
            if (work / ".vagrant").exists() or state is not None:
                self.layout.dir.mkdir(parents=True, exist_ok=True)
                root_daemons.ensure_daemons(self.spec.libvirt_uri, scratch, progress,  # libvirtd must answer
                                            hide_kvm=bool(scratch.vagrant and scratch.vagrant.driver == "qemu"))
            else:
                uri_ok = False
        self._close_ssh_masters(scratch)
        if (work / ".vagrant").exists() and (work / "Vagrantfile").exists():
            progress(f"vagrant destroy in {work}")
            try:
                self._vagrant().destroy()
            except BackendError as exc:
                progress(f"vagrant destroy: {exc}; removing the lab's domains directly")
        if uri_ok:
            remove_leftovers(self.virsh, self.config.name, scratch, progress)
        if not keep_daemons:
            root_daemons.stop_daemons(self.virsh, scratch, progress)
        if work != self.layout.vagrant_work:
            for name in (".vagrant", "settings.json", "Vagrantfile"):
                target = work / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        shutil.rmtree(self.layout.dir, ignore_errors=True)
        if keep_daemons and scratch.vagrant and scratch.vagrant.daemons:
            LabState(name=self.config.name, backend="vagrant", config_digest="",
                     vagrant=VagrantRecord(daemons=scratch.vagrant.daemons)).save()
            return
        progress(f"lab {self.config.name} (vagrant) removed")
        if cache.manifest(self.config.name):
            progress(f"kept: the provisioned-VM cache {cache.cache_dir(self.config.name)} (a cache, not the lab; "
                     f"`python -m lab.backends.vagrant.cache clear --lab {self.config.name}` removes it)")

    def status(self) -> dict:
        state = LabState.load(self.config.name)
        if state is None or not state.ready:
            return {"backend": "vagrant", "name": self.config.name, "up": False}
        out = Lab.from_state(self.config, state).describe()
        try:
            vms = self._vagrant().status()
        except LabError as exc:
            vms = {"error": str(exc)}
        record = state.vagrant or VagrantRecord()
        out["vagrant"] = {"work_dir": str(self.work), "driver": record.driver, "driver_reason": record.driver_reason,
                          "vms": vms, "timings": record.timings, "inner": record.inner,
                          "inner_lines": inner.describe(record.inner), "fill_mibs": state.fill_mibs,
                          "fill_check": record.fill_check,
                          "fill_line": inner.fill_line(record.fill_check) if record.fill_check else "",
                          "resumed_from": record.resumed_from,
                          "cache": str(cache.cache_dir(self.config.name)) if self.spec.keep_provisioned else ""}
        return out

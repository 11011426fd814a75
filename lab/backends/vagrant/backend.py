"""The Vagrant backend: two hypervisor VMs (plus an NFS server VM when chosen) on this machine's libvirt.

`up`:
1. the root-namespace libvirtd (and virtlogd) Vagrant talks to: used if running,
   else started here and recorded, so `down` stops exactly those PIDs;
2. the lab's key pair and SSH client files (same paths on the runner and the VMs);
3. a storage pool of the lab's own (box volume and VM disks), so `down` can remove all;
4. the libvirt driver: kvm (host-passthrough, nested) where KVM boots the lab guest
   on this machine, else qemu (TCG) - lab.yaml `vagrant.driver` may force one;
5. lab.yaml rendered into the Vagrant work dir (lab/backends/vagrant/render.py);
6. `vagrant up --no-provision`, each VM's progress shown as it comes up;
7. `vagrant provision` from the last VM: provision/site.yml for all VMs at once;
8. then as the static backend does for real hosts: SSH + libvirt over the migration
   network, the lab guest image copied, the accelerator probed, preflight as a gate.

`down`: `vagrant destroy`, then whatever of the lab is still in libvirt (domains with
the lab's prefix, its two networks, its pool and volumes), then the daemons it started.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


from lab.backends import Progress
from lab.backends.embedded.backend import _alive, config_digest
from lab.backends.embedded.host_files import write_ssh_client_config, write_ssh_wrapper
from lab.backends.static.backend import IMAGE_DIR, StaticBackend
from lab.config.lab import LabConfig
from lab.errors import BackendError, MissingToolError
from lab.runtime.state import HostState, LabState
from lab.config.vagrant import check_lab

POOL_ROOT = Path("/var/lib/libvirt/images")
VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")
LIBVIRTD_SOCK = Path("/run/libvirt/libvirt-sock")


def _sock_alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _host_uuid(host) -> str:
    """The host UUID libvirt reports (from the VM's machine-id, see the hypervisor role); '' if unreadable."""
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(host.connect().getCapabilities()).findtext("./host/uuid") or ""
    except Exception:  # noqa: BLE001 - informational only
        return ""


class VagrantBackend(StaticBackend):
    probe_s = 60  # a guest under KVM inside a TCG VM took ~6 s to its first sign of life, idle

    def __init__(self, config: LabConfig):
        super().__init__(config)
        self.spec = check_lab(config)
        self.work = Path(self.spec.vagrant_dir) if self.spec.vagrant_dir else self.dir / "vagrant"
        self.key = self.dir / "id_ed25519"
        self.uri = self.spec.libvirt_uri
        self.prefix = f"{config.name}-"

    # -- helpers ---------------------------------------------------------------------------------
    def _virsh(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise BackendError(f"virsh {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
        return proc

    def _vagrant(self):
        from lab.backends.vagrant.driver import VagrantLab

        return VagrantLab(self.work, self.work / "settings.json")

    def _names(self) -> list[str]:
        from lab.backends.vagrant.render import machines

        return [m.name for m in machines(self.config, self.spec)]

    def _save_extra(self, state: LabState, **items) -> None:
        state.extra.update(items)
        state.save()

    # -- root-namespace daemons --------------------------------------------------------------------
    def _ensure_daemons(self, state: LabState, progress: Progress) -> None:
        if not self.uri.startswith("qemu:///system"):
            return  # a remote libvirt: not ours to start
        started = dict(state.extra.get("daemons", {}))
        if Path("/etc/libvirt/qemu/networks/autostart/default.xml").exists() and not _sock_alive(LIBVIRTD_SOCK):
            raise BackendError("libvirt's default NAT network (192.168.122.0/24, a private range) would autostart with "
                               "the root libvirtd; run `virsh net-autostart --disable default` first")
        for name, sock, extra in (("virtlogd", VIRTLOGD_SOCK, []), ("libvirtd", LIBVIRTD_SOCK, [])):
            if _sock_alive(sock):
                continue
            pidfile = self.dir / f"root-{name}.pid"
            pidfile.unlink(missing_ok=True)
            progress(f"starting {name} in the root namespace (none was running; `down` stops it)")
            subprocess.run([name, "--daemon", "--pid-file", str(pidfile), *extra], check=True, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (pidfile.exists() and pidfile.read_text().strip()
                                                       and _sock_alive(sock)):
                time.sleep(0.2)
            if not pidfile.exists() or not _sock_alive(sock):
                raise BackendError(f"{name} did not come up in the root namespace (no {sock})")
            started[name] = int(pidfile.read_text().strip())
            self._save_extra(state, daemons=started)

    def _ensure_time_server(self, state: LabState, progress: Progress) -> None:
        """After `vagrant up` (the runner's address is on the migration network from then on)."""
        from lab.backends.vagrant.timeserver import start_time_server

        started = dict(state.extra.get("daemons", {}))
        if started.get("chronyd") and _alive(started["chronyd"]):
            return
        net = self.config.network
        started["chronyd"] = start_time_server(self.dir, net.runner_address, net.subnet)
        progress(f"time server for the VMs: chronyd on {net.runner_address}:123 (PID {started['chronyd']}; "
                 "never sets this machine's clock; `down` stops it)")
        self._save_extra(state, daemons=started)

    def _stop_daemons(self, state: LabState, progress: Progress) -> None:
        from lab.backends.vagrant.timeserver import stop_time_server

        started = state.extra.get("daemons", {})
        if started.get("chronyd") and stop_time_server(started["chronyd"]):
            progress(f"stopped the lab's time server (chronyd, PID {started['chronyd']})")
        for name in ("libvirtd", "virtlogd"):
            pid = started.get(name)
            if not pid or not _alive(pid):
                continue
            if name == "libvirtd":
                left = self._virsh("list", "--all", "--name", check=False).stdout.split()
                if left:
                    progress(f"leaving the root libvirtd (PID {pid}) running: it still has domains {', '.join(left)}")
                    return
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if not cmdline.endswith(name):
                continue  # the PID was reused by something else
            progress(f"stopping the root {name} this lab started (PID {pid})")
            os.kill(pid, 15)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, 9)

    # -- storage pool -------------------------------------------------------------------------------
    def _ensure_pool(self, state: LabState, progress: Progress) -> None:
        name = self.config.name
        if self._virsh("pool-info", name, check=False).returncode == 0:
            self._virsh("pool-start", name, check=False)
            return
        path = POOL_ROOT / name
        progress(f"storage pool {name} at {path}")
        self._virsh("pool-define-as", name, "dir", "--target", str(path))
        self._save_extra(state, pool={"name": name, "path": str(path)})
        self._virsh("pool-build", name)
        self._virsh("pool-start", name)

    def _remove_pool(self, progress: Progress) -> None:
        name = self.config.name
        if self._virsh("pool-info", name, check=False).returncode != 0:
            return
        self._virsh("pool-start", name, check=False)
        self._virsh("pool-refresh", name, check=False)
        for vol in self._virsh("vol-list", name, check=False).stdout.splitlines():
            vol = vol.split()[0] if vol.split() else ""
            if vol:
                self._virsh("vol-delete", "--pool", name, vol, check=False)
        self._virsh("pool-destroy", name, check=False)
        self._virsh("pool-delete", name, check=False)
        self._virsh("pool-undefine", name, check=False)
        progress(f"storage pool {name} and its volumes removed")

    # -- driver -------------------------------------------------------------------------------------
    def _driver(self, image, progress: Progress) -> tuple[str, str]:
        """kvm (host-passthrough, nested) where KVM really boots a guest here, else qemu (TCG)."""
        if self.spec.driver != "auto":
            return self.spec.driver, f"lab.yaml vagrant.driver: {self.spec.driver}"
        if self.config.accelerator == "tcg":
            return "qemu", "lab.yaml accelerator: tcg"
        from lab.backends.accel import choose_accelerator

        progress("choosing the VMs' libvirt driver: probing KVM on this machine")
        accel = choose_accelerator("auto", "/usr/bin/qemu-system-x86_64", image.kernel, image.initrd, image.key)
        return ("kvm" if accel.name == "kvm" else "qemu"), accel.reason

    # -- lifecycle ----------------------------------------------------------------------------------
    def up(self, progress: Progress, owner_run: str = "") -> None:
        from lab.guest.image import ensure_image
        from lab.backends.vagrant.driver import require_vagrant
        from lab.backends.vagrant.render import settings_document, write_work_dir

        require_vagrant()
        if self.spec.provision and not shutil.which("ansible-playbook"):
            raise MissingToolError("ansible-playbook not found: apt-get install ansible-core ansible (Debian 12)")
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = LabState.load(self.config.name)
            if state and state.ready and state.config_digest == config_digest(self.config) and self._vms_running():
                progress(f"lab {self.config.name} is already up")
                return
            resume = bool(state and state.config_digest == config_digest(self.config)
                          and self.work.joinpath(".vagrant").exists())
            if resume:
                # The same lab, stopped half-way (or its VMs stopped): vagrant up and the playbook are
                # idempotent, so carry on from where it is rather than start over (minutes under TCG).
                progress(f"lab {self.config.name}: resuming the earlier, unfinished `up` (same lab.yaml)")
                daemons = state.extra.get("daemons", {})
            elif state is not None or self.work.joinpath(".vagrant").exists():
                progress(f"lab {self.config.name}: clearing what an earlier lab left")
                self._down_locked(progress, keep_daemons=True)
                kept = LabState.load(self.config.name)  # only the daemons' record survives
                daemons = kept.extra.get("daemons", {}) if kept else {}
            else:
                daemons = {}
            timings: dict[str, float] = {}
            t0 = time.monotonic()
            self.dir.mkdir(parents=True, exist_ok=True)
            state = LabState(name=self.config.name, backend="vagrant", config_digest=config_digest(self.config),
                             storage=self.config.storage, owner_run=owner_run)
            state.extra.update({"daemons": daemons, "work_dir": str(self.work), "prefix": self.prefix,
                                "networks": [f"{self.config.name}-mgmt", f"{self.config.name}-mig"],
                                "vms": self._names(), "timings": timings})
            for spec in self.config.hosts:
                state.hosts.append(HostState(name=spec.name, address=spec.address, netns="", veth="", host_uuid="",
                                             ssh_user="root", ssh_key=""))
            state.save()
            self._ensure_daemons(state, progress)
            self._make_keys()
            self._ensure_pool(state, progress)
            image = ensure_image(progress=progress)
            driver, why = self._driver(image, progress)
            self._save_extra(state, driver=driver, driver_reason=why)
            progress(f"VMs run with libvirt driver {driver} ({why})")
            box_url = self._box_url(progress)
            doc = settings_document(self.config, self.spec, driver=driver, lab_dir=self.dir, work_dir=self.work,
                                    public_key=(self.dir / "id_ed25519.pub").read_text().strip(), box_url=box_url)
            write_work_dir(self.work, doc)
            timings["prepare_s"] = round(time.monotonic() - t0, 1)
            vg = self._vagrant()
            t = time.monotonic()
            progress(f"vagrant up ({', '.join(self._names())}) in {self.work}")
            for line in vg.up_lines(provision=False, parallel=True):
                self._show(line, progress)
            timings["vagrant_up_s"] = round(time.monotonic() - t, 1)
            self._show_status(vg, progress)
            self._ensure_time_server(state, progress)
            if self.spec.provision:
                t = time.monotonic()
                last = self._names()[-1]
                progress(f"provisioning every VM with provision/site.yml (from {last})")
                recap = []
                for line in vg.provision_lines(last):
                    self._show(line, progress, ansible=True)
                    if " : ok=" in line:
                        recap.append(line.strip())
                timings["provision_s"] = round(time.monotonic() - t, 1)
                self._save_extra(state, provision_recap=recap)
            self._save_extra(state, timings=timings)
            t = time.monotonic()
            self._after_provision(state, progress)
            timings["hosts_ready_s"] = round(time.monotonic() - t, 1)
            timings["total_s"] = round(time.monotonic() - t0, 1)
            state.ready = True
            self._save_extra(state, timings=timings)
            progress(f"lab {self.config.name} (vagrant, {len(self.config.hosts)} hypervisor VMs, driver {driver}) "
                     f"ready in {timings['total_s']:.0f} s; accelerator {state.accelerator}")

    def _box_url(self, progress: Progress) -> str | None:
        """A locally built box is added from its file; a missing one is built only when asked (see README)."""
        url = self.spec.box_url
        if url and url.startswith("/") and not Path(url).exists():
            raise BackendError(f"vagrant.box_url: {url} does not exist; build it with "
                               f"`python -m lab.backends.vagrant.box build --name {self.spec.box}`")
        return url

    def _make_keys(self) -> None:
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kvm-acceptance-{self.config.name}",
                            "-f", str(self.key)], check=True)
        known = self.dir / "known_hosts"
        known.touch()
        write_ssh_client_config(self.dir / "ssh_config", self.key, known)
        # The VMs may run under TCG: an SSH login there costs seconds, so the runner keeps one
        # connection per VM open and multiplexes commands over it (`down` closes them).
        with open(self.dir / "ssh_config", "a") as fh:
            fh.write(f"  ControlMaster auto\n  ControlPath {self.dir}/cm-%C\n  ControlPersist 120s\n")
        write_ssh_wrapper(self.dir / "ssh", self.dir / "ssh_config")

    def _close_ssh_masters(self, state: LabState) -> None:
        config = self.dir / "ssh_config"
        if not config.exists():
            return
        for h in state.hosts:
            subprocess.run(["ssh", "-F", str(config), "-O", "exit", f"{h.ssh_user}@{h.address}"],
                           capture_output=True, timeout=15)

    def _show(self, line: str, progress: Progress, ansible: bool = False) -> None:
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

    def _vms_running(self) -> bool:
        if not (self.work / ".vagrant").exists():
            return False
        try:
            states = self._vagrant().status()
        except Exception:  # noqa: BLE001 - not running is the answer
            return False
        return all(states.get(n) == "running" for n in self._names())

    def _show_status(self, vg, progress: Progress) -> None:
        states = vg.status()
        progress("VMs: " + ", ".join(f"{n} {s}" for n, s in states.items()))
        bad = [n for n in self._names() if states.get(n) != "running"]
        if bad:
            raise BackendError(f"vagrant up left {', '.join(bad)} not running (`vagrant status` in {self.work})")

    def _after_provision(self, state: LabState, progress: Progress) -> None:
        """As the static backend: reach the hosts, copy the guest image, pick the accelerator, gate on preflight."""
        from lab.guest.image import ensure_image
        from lab.runtime.lab import Lab

        if not (self.dir / "known_hosts").read_text().strip():
            raise BackendError("provisioning wrote no host keys to the lab's known_hosts (is provision: false?)")
        self._check_runner_address()
        lab = Lab.from_state(self.config, state)
        for host, record in zip(lab.hosts, state.hosts):
            progress(f"{host.name}: ssh and libvirt at {host.address} (migration network)")
            self._check_host(host)
            record.host_uuid = _host_uuid(host)
        state.save()
        from lab.backends.vagrant.timeserver import wait_for_clock

        for host in lab.hosts:
            offset = wait_for_clock(host, self.config.network.runner_address)
            progress(f"{host.name}: clock on the runner's time server (offset {offset * 1000:.2f} ms)")
        image = ensure_image(progress=progress)
        remote = f"{IMAGE_DIR}/{image.key}"
        for host in lab.hosts:
            self._copy_image(host, image, remote, progress)
        state.extra["image"] = {"kernel": f"{remote}/vmlinuz", "initrd": f"{remote}/initrd.img", "key": image.key}
        # Probed even when the VMs run under TCG: QEMU's TCG emulates SVM and qemu64 shows it, so KVM
        # inside the VMs can work (it does on this project's CI machine: the L2 guest boots in ~6 s).
        accel, reason = self._accelerator(lab.hosts, remote, progress)
        if state.extra.get("driver") != "kvm":
            reason += (" (nested KVM on the SVM that TCG emulates for the VMs)" if accel == "kvm" else
                       f" (the VMs run under TCG: {state.extra.get('driver_reason')})")
        state.accelerator, state.accelerator_reason = accel, reason
        state.save()
        self._preflight(Lab.from_state(self.config, state), progress)

    def down(self, progress: Progress) -> None:
        with self.lock:
            self._down_locked(progress)

    def _down_locked(self, progress: Progress, keep_daemons: bool = False) -> None:
        state = LabState.load(self.config.name)
        scratch = state or LabState(name=self.config.name, backend="vagrant", config_digest="")
        work = Path(scratch.extra.get("work_dir") or self.work)
        uri_ok = True
        if self.uri.startswith("qemu:///system") and not _sock_alive(LIBVIRTD_SOCK):
            if (work / ".vagrant").exists() or state is not None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._ensure_daemons(scratch, progress)  # to remove what is left, libvirtd must answer
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
            self._remove_leftovers(scratch, progress)
        if not keep_daemons:
            self._stop_daemons(scratch, progress)
        if work != self.dir / "vagrant":
            for name in (".vagrant", "settings.json", "Vagrantfile"):
                target = work / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        if keep_daemons and scratch.extra.get("daemons"):
            shutil.rmtree(self.dir, ignore_errors=True)
            kept = LabState(name=self.config.name, backend="vagrant", config_digest="",
                            extra={"daemons": scratch.extra["daemons"]})
            kept.save()
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        progress(f"lab {self.config.name} (vagrant) removed")

    def _remove_leftovers(self, state: LabState, progress: Progress) -> None:
        prefix = state.extra.get("prefix") or self.prefix
        for dom in self._virsh("list", "--all", "--name", check=False).stdout.split():
            if dom.startswith(prefix):
                progress(f"removing leftover domain {dom}")
                self._virsh("destroy", dom, check=False)
                self._virsh("undefine", dom, "--remove-all-storage", "--nvram", check=False)
        for net in state.extra.get("networks") or [f"{self.config.name}-mgmt", f"{self.config.name}-mig"]:
            if self._virsh("net-info", net, check=False).returncode == 0:
                progress(f"removing network {net}")
                self._virsh("net-destroy", net, check=False)
                self._virsh("net-undefine", net, check=False)
        self._remove_pool(progress)

    def status(self) -> dict:
        state = LabState.load(self.config.name)
        if state is None or not state.ready:
            return {"backend": "vagrant", "name": self.config.name, "up": False}
        from lab.runtime.lab import Lab

        out = Lab.from_state(self.config, state).describe()
        try:
            vms = self._vagrant().status()
        except Exception as exc:  # noqa: BLE001 - status must still print
            vms = {"error": str(exc)}
        out["vagrant"] = {"work_dir": str(self.work), "driver": state.extra.get("driver"),
                          "driver_reason": state.extra.get("driver_reason"), "vms": vms,
                          "timings": state.extra.get("timings", {})}
        return out


"""A thin wrapper over python-vagrant 1.0.0 that fills its known gaps.

python-vagrant (PyPI 1.0.0, dormant) is used for what it does well (status
parsing, streamed `up`, ssh-config per machine). Its gaps, wrapped here:

- `conf()`/`hostname()` without vm_name merge every host of a multi-VM
  Vagrantfile: `ssh_configs()` asks `vagrant ssh-config NAME` per machine.
- `snapshot_*` act on all machines at once (no vm_name): `snapshot_save(vm, name)`
  and friends pass the machine name.
- `validate()` runs `vagrant validate` without the instance's env (so
  VAGRANT_HOME and the settings path are lost) and hides its output behind
  CalledProcessError: `validate()` here runs it with the env and returns the text.
- `provision()` cannot stream: `provision_lines()` does.
- errors surface as CalledProcessError with no message: every call here raises
  BackendError with the last lines vagrant printed.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import vagrant  # python-vagrant

from lab.errors import BackendError, MissingToolError
from lab.util.process import run, stream

VAGRANT_HOME = Path(os.environ.get("LAB_VAGRANT_HOME", "/var/cache/kvm-acceptance-lab/vagrant/home"))


@functools.lru_cache(maxsize=1)
def ansible_strategy() -> str:
    """The playbook's Ansible strategy here: `mitogen_linear` where ansible-mitogen loads into the Python
    that runs ansible-playbook (Debian 12: apt-get install ansible-mitogen, 0.3.3 patched for
    ansible-core 2.14). It keeps one Python per VM for the whole run instead of starting one and
    importing the module per task, which is what made every task cost 10-30 s in a TCG VM. Else
    `linear`, Ansible's default; LAB_ANSIBLE_STRATEGY chooses (e.g. linear)."""
    if os.environ.get("LAB_ANSIBLE_STRATEGY"):
        return os.environ["LAB_ANSIBLE_STRATEGY"]
    playbook = shutil.which("ansible-playbook")
    if not playbook:
        return "linear"
    with open(playbook, "rb") as f:
        shebang = f.readline().decode(errors="replace")
    python = shebang[2:].strip().split()[0] if shebang.startswith("#!") else "/usr/bin/python3"
    if not Path(python).exists():
        return "linear"
    probe = run([python, "-c", "import ansible_mitogen.plugins.strategy.mitogen_linear"], check=False, timeout=60)
    return "mitogen_linear" if probe.returncode == 0 else "linear"


def vagrant_env(settings: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"VAGRANT_HOME": str(VAGRANT_HOME), "VAGRANT_DEFAULT_PROVIDER": "libvirt",
                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1", "ANSIBLE_STRATEGY": ansible_strategy()})
    if settings is not None:
        env["LAB_VAGRANT_SETTINGS"] = str(settings)
    return env


def require_vagrant() -> None:
    if not shutil.which("vagrant"):
        raise MissingToolError("vagrant not found: apt-get install vagrant vagrant-libvirt (Debian 12)")
    out = run(["vagrant", "plugin", "list"], check=False, env=vagrant_env(), error=MissingToolError).stdout
    if "vagrant-libvirt" not in out:
        raise MissingToolError("the vagrant-libvirt plugin is missing: apt-get install vagrant-libvirt")


def drop_stale_box(box: str, box_file: Path, progress) -> bool:
    """Vagrant adds a box once and keeps using it: with box_check_update off it never notices that the
    file it came from was rebuilt (`box build --force`, or a fresh machine's build after an old one).
    Remove the added copy when the file is newer, so `vagrant up` adds it again; True if removed."""
    added = VAGRANT_HOME / "boxes" / box.replace("/", "-VAGRANTSLASH-")
    if not (added.exists() and box_file.exists()) or box_file.stat().st_mtime <= added.stat().st_mtime:
        return False
    progress(f"box {box}: {box_file} is newer than the copy Vagrant added; removing that copy")
    run(["vagrant", "box", "remove", "--force", "--all", box], env=vagrant_env(), timeout=300, error=BackendError)
    return True


class VagrantLab:
    """One Vagrant work dir (multi-machine)."""

    def __init__(self, root: Path, settings: Path | None = None):
        self.root = Path(root)
        self.env = vagrant_env(settings)
        self.v = vagrant.Vagrant(str(self.root), quiet_stdout=True, quiet_stderr=True, env=self.env)

    # -- plain commands, with vagrant's own words on failure ---------------------------------------
    def run(self, *args: str, timeout: float = 600) -> str:
        proc = run(["vagrant", *args], check=False, cwd=self.root, env=self.env, timeout=timeout,
                   error=BackendError, what=f"vagrant {' '.join(args)}")
        if proc.returncode != 0:
            text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise BackendError(f"vagrant {' '.join(args)} failed: {' / '.join(text[-3:]) or proc.returncode}")
        return proc.stdout

    def stream(self, *args: str) -> Iterator[str]:
        """Lines of a vagrant command as they come (stderr merged); BackendError with the tail on failure."""
        return stream(["vagrant", *args], cwd=self.root, env=self.env, error=BackendError,
                      what=f"vagrant {' '.join(args)}")

    def validate(self) -> str:
        return self.run("validate")

    # -- lifecycle -------------------------------------------------------------------------------------
    def up_lines(self, *, provision: bool = False, parallel: bool = True) -> Iterator[str]:
        args = ["up", "--provision" if provision else "--no-provision"]
        args.append("--parallel" if parallel else "--no-parallel")
        return self.stream(*args)

    def provision_lines(self, vm_name: str) -> Iterator[str]:
        return self.stream("provision", vm_name)

    def destroy(self, vm_name: str | None = None) -> None:
        self.run(*(["destroy", "--force"] + ([vm_name] if vm_name else [])), timeout=900)

    def status(self) -> dict[str, str]:
        """Machine name -> state (running, shutoff, not_created, ...), by python-vagrant's parser."""
        try:
            return {s.name: s.state for s in self.v.status()}
        except subprocess.CalledProcessError as exc:
            raise BackendError(f"vagrant status failed in {self.root} (exit {exc.returncode})") from None

    # -- per-machine SSH (python-vagrant merges hosts without vm_name) --------------------------------
    def ssh_config(self, vm_name: str) -> dict[str, str]:
        text = self.run("ssh-config", vm_name)
        conf: dict[str, str] = {}
        for line in text.splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                conf.setdefault(parts[0], parts[1].strip('"'))
        return conf

    def ssh_configs(self, vm_names: list[str]) -> dict[str, dict[str, str]]:
        return {name: self.ssh_config(name) for name in vm_names}

    def ssh(self, vm_name: str, command: str, timeout: float = 120) -> str:
        return self.run("ssh", vm_name, "-c", command, timeout=timeout)

    # -- per-machine snapshots (python-vagrant's act on every machine) --------------------------------
    def snapshot_save(self, vm_name: str, name: str) -> None:
        self.run("snapshot", "save", "--force", vm_name, name, timeout=900)

    def snapshot_restore(self, vm_name: str, name: str) -> None:
        self.run("snapshot", "restore", "--no-provision", vm_name, name, timeout=900)

    def snapshot_delete(self, vm_name: str, name: str) -> None:
        self.run("snapshot", "delete", vm_name, name, timeout=900)

    def snapshot_list(self, vm_name: str) -> list[str]:
        out = self.run("snapshot", "list", vm_name)
        return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("==>")]

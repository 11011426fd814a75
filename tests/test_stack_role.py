"""The playbook's role `stack`, run for real on the Vagrant box's own root filesystem (no VM).

The box (lab/backends/vagrant/box.py) is what a Vagrant host boots; its ext4 image is copied out
with debugfs, and Ansible's chroot connection runs the role there: the suite added as an apt source,
QEMU 10.0.2 and libvirt 11.3.0 from bookworm-backports at the exact versions `lab.stacks pins`
resolves, a second run changing nothing. The chroot lives in a mount namespace of its own; a
policy-rc.d keeps the packages' maintainer scripts from starting daemons on this machine.
Needs the box (`make vagrant-test` builds it) and the Debian mirror; runs in `make vagrant-test`.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BOX = Path("/var/cache/kvm-acceptance-lab/vagrant/boxes/kvmlab-bookworm.box")
RUN = """set -e
R={root}
mount -t proc proc $R/proc
mount --rbind /dev $R/dev
mount -t sysfs sys $R/sys
ansible-playbook -i {inv} -e @{extra} {play}
ansible-playbook -i {inv} -e @{extra} {play}
chroot $R /usr/bin/qemu-system-x86_64 --version
chroot $R /usr/sbin/libvirtd --version
"""
PLAY = """- hosts: all
  gather_facts: true
  gather_subset: [min]
  roles: [{role: stack}]
  handlers:
    - {name: Restart libvirtd, ansible.builtin.debug: {msg: no daemon runs in this chroot}}
"""


@pytest.mark.vagrant
def test_role_stack_installs_the_pinned_stack_on_the_box_and_changes_nothing_the_second_time(tmp_path):
    for tool in ("debugfs", "ansible-playbook", "unshare", "qemu-img"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup)")
    if not BOX.exists():
        pytest.skip(f"no box at {BOX}: build it with `python -m lab.backends.vagrant.box build`")
    pins = subprocess.run([sys.executable, "-m", "lab.stacks", "--lab-config", str(REPO / "labs/vagrant-stacks.yaml"),
                           "pins"], capture_output=True, text=True, timeout=180, cwd=REPO, check=True)
    stack = yaml.safe_load(pins.stdout)["all"]["hosts"]["hv2"]["lab_stack"]
    with tarfile.open(BOX) as box:
        box.extract("box.img", tmp_path, filter="data")
    subprocess.run(["qemu-img", "convert", "-O", "raw", tmp_path / "box.img", tmp_path / "box.raw"], check=True)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {root}", tmp_path / "box.raw"], check=True, capture_output=True)
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(json.dumps({"all": {"hosts": {"box": {
        "ansible_connection": "community.general.chroot", "ansible_host": str(root),
        "ansible_python_interpreter": "/usr/bin/python3"}}}}))
    # As the Vagrant backend passes it: one extra var naming every host's stack (render.py).
    (tmp_path / "extra.json").write_text(json.dumps({"lab_stacks": {"box": stack}}))
    (tmp_path / "play.yml").write_text(PLAY)
    script = RUN.format(root=root, inv=inventory, extra=tmp_path / "extra.json", play=tmp_path / "play.yml")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1200,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ANSIBLE_NOCOLOR": "1",
                               "ANSIBLE_ROLES_PATH": str(REPO / "provision/roles")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    first, second = re.findall(r"box\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", proc.stdout)
    assert first[1] == "0" and int(first[0]) >= 2, proc.stdout[-3000:]
    assert second == ("0", "0"), proc.stdout[-3000:]  # idempotent
    assert f"QEMU emulator version 10.0.2 (Debian {stack['qemu']})" in proc.stdout
    assert "(libvirt) 11.3.0" in proc.stdout
    leftover = [p for p in Path("/proc").glob("[0-9]*") if _root_of(p).startswith(str(tmp_path))]
    assert not leftover, leftover  # nothing the packages started runs on


def _root_of(proc: Path) -> str:
    try:
        return str((proc / "root").readlink())
    except OSError:
        return ""

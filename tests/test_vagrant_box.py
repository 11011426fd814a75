"""The Vagrant lab's box and its provisioned-VM cache: the box builder's pieces, the python-vagrant
wrapper, the cache key, the inner accelerator chosen by measurement, and agent waits paced by the
measured fill speed. No VM is made."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lab.backends.vagrant import box as boxmod
from lab.errors import BackendError
from tests.vagrant_tools import REPO


# -- box builder pieces and the python-vagrant wrapper ---------------------------------------------

def test_box_vagrantfile_boots_the_kernel_directly():
    text = boxmod.box_vagrantfile(Path("/c/k"), Path("/c/i"))
    assert "lv.kernel = '/c/k'" in text and "lv.initrd = '/c/i'" in text
    assert "root=/dev/vda" in text and "net.ifnames=0" in text
    p = boxmod.paths("kvmlab/bookworm", Path("/o"))
    assert p.box == Path("/o/kvmlab-bookworm.box") and p.kernel.name == "kvmlab-bookworm.vmlinuz"


def test_box_build_command_help():
    proc = subprocess.run([sys.executable, "-m", "lab.backends.vagrant.box", "build", "--help"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0 and "--name" in proc.stdout and "--force" in proc.stdout


@pytest.fixture
def fake_vagrant(tmp_path, monkeypatch):
    """A `vagrant` on PATH that answers ssh-config per machine and records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    script = bindir / "vagrant"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" >> {log}
        case "$1" in
          ssh-config) printf 'Host %s\\n  HostName 198.19.200.%s\\n  User vagrant\\n  Port 22\\n  IdentityFile "/k/%s"\\n' \
                        "$2" "${{2#hv}}" "$2";;
          snapshot) echo "==> $3: snapshot";;
          status) echo "1,hv1,state,running"; echo "1,hv2,state,shutoff";;
          fail) echo "boom: the reason" >&2; exit 3;;
        esac
        """))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def test_wrapper_ssh_config_per_machine_and_snapshots_per_machine(tmp_path, fake_vagrant):
    from lab.backends.vagrant.driver import VagrantLab
    from lab.errors import BackendError

    vg = VagrantLab(tmp_path)
    confs = vg.ssh_configs(["hv1", "hv2"])
    assert confs["hv1"]["HostName"] == "198.19.200.1" and confs["hv2"]["HostName"] == "198.19.200.2"
    assert confs["hv2"]["IdentityFile"] == "/k/hv2"
    vg.snapshot_save("hv2", "clean")
    calls = fake_vagrant.read_text().splitlines()
    assert calls[:2] == ["ssh-config hv1", "ssh-config hv2"]
    assert calls[2] == "snapshot save --force hv2 clean"  # one machine, not all of them
    with pytest.raises(BackendError, match="boom: the reason"):
        vg.run("fail")


def test_a_rebuilt_box_file_replaces_the_copy_vagrant_added(tmp_path, fake_vagrant, monkeypatch):
    from lab.backends.vagrant import driver

    monkeypatch.setattr(driver, "VAGRANT_HOME", tmp_path / "home")
    box_file = tmp_path / "kvmlab-bookworm.box"
    box_file.write_text("box")
    said = []
    assert not driver.drop_stale_box("kvmlab/bookworm", box_file, said.append)  # never added: nothing to drop
    added = tmp_path / "home/boxes/kvmlab-VAGRANTSLASH-bookworm"
    added.mkdir(parents=True)
    os.utime(box_file, (time.time() - 60, time.time() - 60))
    assert not driver.drop_stale_box("kvmlab/bookworm", box_file, said.append)  # added after it was built
    os.utime(box_file, (time.time() + 60, time.time() + 60))
    assert driver.drop_stale_box("kvmlab/bookworm", box_file, said.append)
    assert fake_vagrant.read_text().splitlines()[-1] == "box remove --force --all kvmlab/bookworm"
    assert said and "is newer than the copy Vagrant added" in said[0]


# -- provision once: the box, the provisioned-VM cache, the inner accelerator ----------------------

def test_box_holds_every_package_the_playbook_installs():
    """The playbook only configures on a box built here: every Debian package its roles name is in the box."""
    roles = REPO / "provision" / "roles"
    wanted = set(yaml.safe_load((roles / "hypervisor/defaults/main.yml").read_text())["hypervisor_packages"]["Debian"])
    wanted |= set(yaml.safe_load((roles / "nfs_server/defaults/main.yml").read_text())["nfs_server_packages"]["Debian"])
    for task in yaml.safe_load((roles / "common/tasks/main.yml").read_text()):
        for sub in task.get("block", [task]):
            names = (sub.get("ansible.builtin.apt") or {}).get("name", [])
            wanted |= set([names] if isinstance(names, str) else names)
    assert "chrony" in wanted and "qemu-system-x86" in wanted
    assert wanted - set(boxmod.LAB_PACKAGES) - set(boxmod.BASE_PACKAGES) == set()


def test_cache_key_follows_lab_box_playbook_and_driver(monkeypatch, tmp_path):
    from lab.backends.vagrant import cache

    base = cache.cache_key("digest", "box built 1", "qemu")
    assert base == cache.cache_key("digest", "box built 1", "qemu")
    assert len({base, cache.cache_key("other", "box built 1", "qemu"), cache.cache_key("digest", "box built 2", "qemu"),
                cache.cache_key("digest", "box built 1", "kvm")}) == 4
    fake = tmp_path / "provision"
    shutil.copytree(REPO / "provision", fake)
    monkeypatch.setattr(cache, "PROVISION", fake)
    same = cache.cache_key("digest", "box built 1", "qemu")
    (fake / "roles/common/defaults/main.yml").write_text("---\nlab_name: changed\n")
    assert cache.cache_key("digest", "box built 1", "qemu") != same


def test_cache_usable_only_when_whole(monkeypatch, tmp_path):
    from lab.backends.vagrant import cache

    monkeypatch.setattr(cache, "ROOT", tmp_path)
    d = tmp_path / "kvmvag"
    (d / "dot-vagrant").mkdir(parents=True)
    for name in ("box.img", "id_ed25519", "known_hosts", "hv1.qcow2", "hv1.xml", "hv2.qcow2", "hv2.xml"):
        (d / name).write_text("x")
    (d / "manifest.json").write_text(json.dumps({"key": "k1", "vms": ["hv1", "hv2"]}))
    assert cache.usable("kvmvag", "k1", ["hv2", "hv1"])
    assert cache.usable("kvmvag", "k2", ["hv1", "hv2"]) is None  # lab.yaml, box or playbook changed
    assert cache.usable("kvmvag", "k1", ["hv1", "hv2", "nfs"]) is None
    (d / "hv2.qcow2").unlink()
    assert cache.usable("kvmvag", "k1", ["hv1", "hv2"]) is None  # half a cache is none
    said = []
    assert cache.clear("kvmvag", said.append) and not d.exists() and "cleared" in said[0]


def test_cache_cli_bad_lab_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "lab.backends.vagrant.cache", "clear", "--lab", "no-such-lab"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("cache: no provisioned VMs cached for lab 'no-such-lab'")


def _figures(accel, boot, fill, migrate):
    return {"accel": accel, "boot_s": boot, "fill_mibs": fill, "dirty_mibs": 4.0, "heartbeat_pct": 60.0,
            "migrate_s": migrate, "cycle_s": boot + 32 / fill + migrate}


def test_inner_accelerator_chosen_by_the_measured_cycle():
    from lab.backends.vagrant.inner import choose, describe

    slow_fill = {"kvm": _figures("kvm", 6, 0.4, 20), "tcg": _figures("tcg", 70, 30, 15)}  # 106 s against 86 s
    accel, why = choose(slow_fill, "auto")
    assert accel == "tcg" and why.endswith("tcg 86 s, kvm 106 s")
    fast_fill = {"kvm": _figures("kvm", 6, 8, 20), "tcg": _figures("tcg", 70, 30, 15)}
    assert choose(fast_fill, "auto")[0] == "kvm"
    assert choose(slow_fill, "kvm") == ("kvm", "lab.yaml accelerator: kvm (its cycle measured: kvm 106 s)")
    assert describe(slow_fill)[0].startswith("kvm: boot 6.0 s, fill 0.40 MiB/s")
    broken = {"kvm": {"accel": "kvm", "error": "no sign of life within 90 s"}, "tcg": _figures("tcg", 70, 30, 15)}
    assert choose(broken, "auto")[0] == "tcg"
    with pytest.raises(BackendError, match=r"^accelerator: kvm \(lab.yaml\) does not work inside the VMs"):
        choose(broken, "kvm")


def test_agent_timeouts_follow_the_measured_fill_speed():
    """The 60 s callers pass (lab.migration.integrity) stands where nothing was measured (embedded labs);
    with a measured speed, fill/verify wait 4x what the fill's size needs at that speed plus 10 s, and
    dirty/oracle the same for the dirty writer's sweep region (what the oracle scans)."""
    from lab.guest.domain import Guest, GuestConfig, paced_wait_s

    class Control:
        def command(self, cmd, *args, timeout):
            return timeout

    assert paced_wait_s(32, 0) == 0 and paced_wait_s(0, 1.0) == 0
    assert paced_wait_s(32, 1.33) == pytest.approx(10 + 4 * 32 / 1.33)  # 106 s, where 82 s ran out (run 4)
    cfg = GuestConfig(name="g", memory_mib=256, vcpus=1, address="198.18.0.200", prefixlen=16, runner="198.18.0.1",
                      heartbeat_port=1, heartbeat_us=1000, kernel="k", initrd="i", agent_timeout_s=10)
    embedded = Guest(cfg, None, None, Control())
    assert [embedded.agent("fill", 1, 32, timeout=60), embedded.agent("verify", timeout=60), embedded.agent("info")] \
        == [60, 60, 10]
    slow = Guest(dataclasses.replace(cfg, fill_mibs=0.5), None, None, Control())
    assert slow.agent("fill", 1, 32, timeout=60) == 10 + 4 * 32 / 0.5
    assert slow.agent("verify", timeout=60) == 10 + 4 * 32 / 0.5 and slow.agent("info") == 10
    assert slow.agent("oracle", timeout=60) == 60  # no dirty region yet: the caller's wait
    assert slow.agent("dirty", 8, 64) == 10 + 4 * 64 / 0.5
    assert slow.agent("oracle", timeout=60) == 10 + 4 * 64 / 0.5  # the 64 MiB sweep region, not the 32 MiB fill
    assert slow.agent("fill", 99, 64, timeout=60) == 10 + 4 * 64 / 0.5  # the size of this fill, not the measured one
    fast = Guest(dataclasses.replace(cfg, fill_mibs=40), None, None, Control())
    assert fast.agent("fill", 1, 32, timeout=60) == 60  # never shorter than the caller's wait


class _FillGuest:
    """What inner's fill measurement touches of a Guest: wait_ready and the agent's control channel."""

    def __init__(self, fill_s: float, boots: bool = True):
        self.fill_s, self.boots, self.asked = fill_s, boots, []
        self.control = self

    def wait_ready(self, timeout):
        if not self.boots:
            raise BackendError(f"no heartbeat within {timeout:.0f} s")

    def command(self, cmd, *args, timeout):
        from lab.errors import AgentTimeout

        self.asked.append((cmd, args, timeout))
        if self.fill_s > timeout:
            raise AgentTimeout(f"guest agent did not answer `{cmd}` within {timeout:.0f} s")
        time.sleep(self.fill_s)
        return {"mib": str(args[1])}


@pytest.fixture
def fill_lab(monkeypatch):
    """inner's guest plumbing replaced: guests made by create_guest are _FillGuest objects."""
    from types import SimpleNamespace

    from lab.backends.vagrant import inner

    made = []

    def create_guest(lab, host, **kw):
        made.append((host, kw["domain_type"]))
        return lab.next_guest

    monkeypatch.setattr(inner, "create_guest", create_guest)
    monkeypatch.setattr(inner, "remove_guest", lambda lab, guest: made.append("removed"))
    hv1, hv2 = SimpleNamespace(name="hv1"), SimpleNamespace(name="hv2")
    return SimpleNamespace(pairs=[(hv1, hv2)], next_guest=None, made=made)


def test_fill_speed_is_measured_at_the_suites_size_in_this_boot(fill_lab):
    from lab.backends.vagrant import inner

    fill_lab.next_guest = guest = _FillGuest(fill_s=0.2)
    said = []
    got = inner.check_fill(fill_lab, "kvm", said.append)
    assert guest.asked == [("fill", (7, inner.SUITE_FILL_MIB), inner.FILL_BUDGET_S)]  # 32 MiB, not 4
    assert got["mib"] == 32 and got["fill_s"] >= 0.2 and got["fill_mibs"] == pytest.approx(32 / got["fill_s"], rel=0.05)
    assert fill_lab.made == [(fill_lab.pairs[0][0], "kvm"), "removed"]
    assert inner.fill_line(got).startswith("kvm on hv1: boot ") and "the agent waits up to" in inner.fill_line(got)
    fill_lab.next_guest = _FillGuest(fill_s=1e9)
    with pytest.raises(BackendError, match=r"^hv1: a 32 MiB fill did not end within 300 s under kvm$"):
        inner.check_fill(fill_lab, "kvm", said.append)
    assert fill_lab.made[-1] == "removed"  # the guest goes either way


def test_a_warm_up_measures_the_fill_again_and_falls_back_to_measuring_all(fill_lab, monkeypatch):
    from lab.backends.vagrant import inner

    cached = {"inner": {"kvm": _figures("kvm", 6, 1.33, 20)}, "accelerator": "kvm", "accelerator_reason": "measured"}
    fill_lab.next_guest = _FillGuest(fill_s=0.1)
    accel, why, figures, fill = inner.for_this_boot(fill_lab, "auto", cached, lambda _: None, where="TCG VMs")
    assert (accel, why, figures) == ("kvm", "measured", cached["inner"])  # the cache's choice and figures kept
    assert fill["mib"] == 32 and fill["fill_mibs"] > 100  # this boot's speed, not the cache's 1.33 MiB/s
    measured = {"kvm": _figures("kvm", 6, 2.0, 20), "tcg": _figures("tcg", 70, 30, 15)}
    for f in measured.values():
        f.update(host="hv1", fill_s=32 / f["fill_mibs"])
    monkeypatch.setattr(inner, "measure_and_choose", lambda lab, wanted, progress: ("kvm", "shorter", measured))
    fill_lab.next_guest = _FillGuest(fill_s=0, boots=False)  # the cached accelerator fails in this boot
    said = []
    accel, why, figures, fill = inner.for_this_boot(fill_lab, "auto", cached, said.append, where="TCG VMs")
    assert (accel, why, figures) == ("kvm", "shorter (TCG VMs)", measured)
    assert fill == {"accel": "kvm", "host": "hv1", "boot_s": 6, "fill_s": 16.0, "fill_mibs": 2.0, "mib": 32}
    assert any("measuring the accelerators again" in line for line in said)
    assert inner.for_this_boot(fill_lab, "auto", None, said.append)[3] == fill  # fresh: the cycle's own fill

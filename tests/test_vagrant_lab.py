"""The Vagrant lab: settings validation, the rendered Vagrantfile settings, `vagrant validate`, the box
builder's pieces, the python-vagrant wrapper, and (marked vagrant + slow) the whole lab end to end.

Fast tests run in CI (`make test`); those that need vagrant / vagrant-libvirt skip with the reason
when they are missing. The end-to-end test (`make vagrant-test`) builds the box if needed, brings the
lab up under whatever the machine has (TCG here), checks the playbook is idempotent, runs the
preflight suite and the precopy-idle live migration on it, and takes it down, checking nothing is left.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lab.config.lab import parse_lab_config
from lab.errors import BackendError, ConfigError
from lab.backends.vagrant import box as boxmod
from lab.backends.vagrant.render import REPO_VAGRANTFILE, machines, settings_document, vm_mac, write_work_dir
from lab.config.vagrant import DEFAULT_BOX, VagrantSpec, check_lab, nfs_server_address, parse_vagrant_settings

REPO = Path(__file__).resolve().parent.parent
TCG_YAML = REPO / "labs" / "vagrant-tcg.yaml"
EXAMPLE_YAML = REPO / "labs" / "vagrant-example.yaml"
STACKS_YAML = REPO / "labs" / "vagrant-stacks.yaml"
FORBIDDEN = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")


def _doc(path: Path, **changes) -> dict:
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key.startswith("vagrant."):
            data["vagrant"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return data


def _config(path: Path = TCG_YAML, **changes):
    return parse_lab_config(_doc(path, **changes), str(path))


def _vagrant_with_libvirt() -> str | None:
    """None when `vagrant validate` can run here, else why not."""
    if not shutil.which("vagrant"):
        return "vagrant is not installed (apt-get install vagrant vagrant-libvirt)"
    from lab.backends.vagrant.driver import vagrant_env

    out = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, env=vagrant_env()).stdout
    if "vagrant-libvirt" not in out:
        return "the vagrant-libvirt plugin is not installed (apt-get install vagrant-libvirt)"
    return None


# -- settings ---------------------------------------------------------------------------------------

def test_shipped_vagrant_configs_load():
    for path in (TCG_YAML, EXAMPLE_YAML, STACKS_YAML):
        config = _config(path)
        assert config.backend == "vagrant"
        assert isinstance(config.vagrant, VagrantSpec)
        check_lab(config)


def test_defaults():
    spec = parse_vagrant_settings({})
    assert spec.box == DEFAULT_BOX == "debian/bookworm64"
    assert spec.management_network == "198.19.200.0/24"
    assert spec.driver == "auto" and spec.nfs_server == "third-vm"


@pytest.mark.parametrize("key,value,message", [
    ("cpus", "x", "vagrant.cpus: 'x' is not a whole number"),
    ("cpus", 0, "vagrant.cpus: 0 is out of range (1 to 64)"),
    ("memory_mib", True, "vagrant.memory_mib: True is not a whole number"),
    ("memory_mib", 128, "vagrant.memory_mib: 128 is out of range"),
    ("driver", "xen", "vagrant.driver: 'xen' is not one of auto, kvm, qemu"),
    ("management_network", "192.168.121.0/24", "vagrant.management_network: 192.168.121.0/24 overlaps private range"),
    ("management_network", "203.0.113.0/24", "vagrant.management_network: 203.0.113.0/24 is outside 198.18.0.0/15"),
    ("management_network", "nonsense", "vagrant.management_network: 'nonsense' is not an IPv4 network"),
    ("management_network_mode", "bridge", "vagrant.management_network_mode: 'bridge' is not one of nat, none"),
    ("nfs_server", "Bad Name", "vagrant.nfs_server: 'Bad Name' is not third-vm, none or a host name"),
    ("vagrant_dir", "relative/dir", "vagrant.vagrant_dir: 'relative/dir' is not an absolute path"),
    ("box", "two words", "vagrant.box: 'two words' is not a box name"),
    ("box", "", "vagrant.box: '' is not a non-empty string"),
    ("provision", "yes", "vagrant.provision: 'yes' is not true or false"),
    ("keep_provisioned", "no", "vagrant.keep_provisioned: 'no' is not true or false"),
    ("libvirt_uri", "xen:///", "vagrant.libvirt_uri: 'xen:///' is not a QEMU libvirt URI"),
    ("colour", "blue", "vagrant.colour: unknown key (allowed: box,"),
])
def test_settings_errors_name_the_field(key, value, message):
    with pytest.raises(ConfigError) as err:
        _config(**{f"vagrant.{key}": value})
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_vagrant_mapping_must_be_a_mapping():
    data = _doc(TCG_YAML)
    data["vagrant"] = ["box"]
    with pytest.raises(ConfigError, match=r"^vagrant: expected a mapping, got list$"):
        parse_lab_config(data)


@pytest.mark.parametrize("change,message", [
    ({"hosts": [{"name": "hv1", "address": "198.19.202.11"}, {"name": "hv2", "address": "198.19.201.12"}]},
     "hosts[0].address: 198.19.202.11 is not inside network.subnet 198.19.201.0/24"),
    ({"hosts": [{"name": "hv1", "address": "198.19.201.200"}, {"name": "hv2", "address": "198.19.201.12"}]},
     "hosts[0].address: 198.19.201.200 collides with the runner address or guest_range"),
    ({"vagrant.management_network": "198.19.201.0/25"},
     "vagrant.management_network: 198.19.201.0/25 overlaps the migration network"),
    ({"vagrant.nfs_server": "none"}, "vagrant.nfs_server: none, but storage: nfs needs an NFS server"),
    ({"vagrant.nfs_server": "hv9"}, "vagrant.nfs_server: 'hv9' is not third-vm, none or one of the hosts"),
    ({"vagrant.nfs_server": "third-vm", "vagrant.nfs_vm_name": "hv2"}, "vagrant.nfs_vm_name: 'hv2' is already"),
    ({"hosts": [{"name": "hv1", "address": "198.19.201.11", "ssh_user": "vagrant"},
                {"name": "hv2", "address": "198.19.201.12"}]}, "hosts[0].ssh_user: the vagrant lab logs in as root"),
])
def test_cross_checks_name_the_field(change, message):
    config = _config(**change)
    with pytest.raises(ConfigError) as err:
        check_lab(config)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_local_storage_needs_no_nfs_server():
    config = _config(storage="local", **{"vagrant.nfs_server": "none"})
    spec = check_lab(config)
    assert nfs_server_address(config, spec) is None
    assert [m.name for m in machines(config, spec)] == ["hv1", "hv2"]


# -- the rendered settings --------------------------------------------------------------------------

def _all_addresses(obj) -> list[str]:
    text = json.dumps(obj)
    return re.findall(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:/\d+)?\b", text)


@pytest.mark.parametrize("source", [TCG_YAML, EXAMPLE_YAML], ids=["tcg-hv1-nfs", "example-third-vm"])
@pytest.mark.parametrize("storage", ["shared", "nfs", "local"])
def test_settings_document(tmp_path, source, storage):
    config = _config(source).model_copy(update={"storage": storage})
    spec = check_lab(config)
    lab_dir = Path("/var/lib/kvm-acceptance-lab") / config.name
    doc = settings_document(config, spec, driver="qemu", lab_dir=lab_dir, work_dir=tmp_path, public_key="ssh-ed25519 K")
    names = [m["name"] for m in doc["machines"]]
    third = spec.nfs_server == "third-vm" and storage != "local"
    assert names == ["hv1", "hv2"] + (["nfs"] if third else [])
    assert doc["migration"]["host_ip"] == config.network.runner_address
    assert doc["management"]["address"] == spec.management_network
    assert doc["prefix"] == f"{config.name}-" and doc["storage_pool"] == config.name
    for m in doc["machines"]:
        assert m["mac"] == vm_mac(m["address"])
    # Never a private range; every lab address inside 198.18.0.0/15 (the netmask aside).
    for text in _all_addresses(doc):
        if text == doc["migration"]["netmask"]:
            continue
        net = ipaddress.ip_network(text, strict=False)
        assert not any(net.overlaps(bad) for bad in FORBIDDEN), text
        assert net.subnet_of(LAB_RANGE), text
    ev = doc["provision"]["extra_vars"]
    groups = doc["provision"]["groups"]
    assert groups["hypervisors"] == ["hv1", "hv2"]
    if storage == "local":
        assert ev["lab_shared_mount"] == "" and groups["nfs_servers"] == []
    else:
        # Mounted exactly where the harness puts shared disks (lab.runtime.lab.Lab.storage_path).
        assert ev["lab_shared_mount"] == str(lab_dir / ("nfs-export" if storage == "nfs" else "shared"))
        assert groups["nfs_servers"] == (["nfs"] if third else [spec.nfs_server])
        assert ev["lab_nfs_server"] == nfs_server_address(config, spec)
    assert Path(doc["provision"]["playbook"]).is_file()
    assert Path(doc["provision"]["config_file"]).is_file()
    assert doc["driver"] == "qemu" and doc["cpu_model"] == "qemu64"


def test_a_host_on_an_archive_stack_gets_its_pins_as_the_playbooks_lab_stack(tmp_path):
    config = _config(STACKS_YAML)
    stack = {"name": "bookworm-backports", "suite": "bookworm-backports", "packages": ["qemu-system-x86=1:10.0.2"]}
    doc = settings_document(config, check_lab(config), driver="qemu", lab_dir=tmp_path, work_dir=tmp_path,
                            public_key="k", stacks={"hv2": stack})
    # An extra var (JSON), not a host var: Vagrant writes host vars as INI text, a dict arriving as a string.
    assert doc["provision"]["extra_vars"]["lab_stacks"] == {"hv2": stack}
    assert not any("lab_stack" in v for v in doc["provision"]["host_vars"].values())
    roles = yaml.safe_load((REPO / "provision/site.yml").read_text())[-1]["roles"]
    assert [r["role"] for r in roles][:2] == ["stack", "hypervisor"]  # installed before libvirt is configured


def test_work_dir_stub_loads_the_repo_vagrantfile(tmp_path):
    config = _config()
    doc = settings_document(config, check_lab(config), driver="kvm", lab_dir=tmp_path, work_dir=tmp_path,
                            public_key="k")
    settings = write_work_dir(tmp_path / "w", doc)
    stub = (tmp_path / "w" / "Vagrantfile").read_text()
    assert f"load '{REPO_VAGRANTFILE}'" in stub and "settings.json" in stub
    assert json.loads(settings.read_text())["driver"] == "kvm"
    # The repo Vagrantfile has no lab-specific value of its own.
    text = REPO_VAGRANTFILE.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", code)
    assert "host-passthrough" in text and "nested = true" in text and "'custom'" in text


@pytest.mark.parametrize("storage", ["shared", "nfs", "local"])
@pytest.mark.parametrize("driver", ["qemu", "kvm"])
def test_vagrant_validate(tmp_path, storage, driver):
    why = _vagrant_with_libvirt()
    if why:
        pytest.skip(why)
    from lab.backends.vagrant.driver import VagrantLab

    config = _config(EXAMPLE_YAML if storage != "local" else TCG_YAML).model_copy(update={"storage": storage})
    doc = settings_document(config, check_lab(config), driver=driver, lab_dir=tmp_path, work_dir=tmp_path,
                            public_key="ssh-ed25519 K")
    settings = write_work_dir(tmp_path, doc)
    out = VagrantLab(tmp_path, settings).validate()
    assert "validated successfully" in out


def test_vagrant_validate_catches_a_bad_setting(tmp_path):
    why = _vagrant_with_libvirt()
    if why:
        pytest.skip(why)
    from lab.errors import BackendError
    from lab.backends.vagrant.driver import VagrantLab

    config = _config()
    doc = settings_document(config, check_lab(config), driver="qemu", lab_dir=tmp_path, work_dir=tmp_path,
                            public_key="k")
    doc["box"] = ""
    settings = write_work_dir(tmp_path, doc)
    with pytest.raises(BackendError, match="Box value for guest 'hv1' is an empty string"):
        VagrantLab(tmp_path, settings).validate()


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
    from lab.errors import BackendError
    from lab.backends.vagrant.driver import VagrantLab

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


# -- end to end (make vagrant-test) -----------------------------------------------------------------

def _lab(*args: str, config: Path, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lab", "--lab-config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def _virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True, text=True).stdout


def _nested_check_on(config) -> list[str]:
    """The nested check on the hypervisor VMs, for a lab that needs KVM inside them: it must agree with
    what the VMs show, and fail for real once the destination's KVM module is unloaded (then restored).
    Runs after the suites, when no L2 guest holds /dev/kvm."""
    from lab.preflight import FAIL, PASS, context_for, nested_need, run_preflight
    from lab.runtime.lab import Lab

    lab = Lab.load(config)
    need = nested_need(lab) or "lab.yaml accelerator: kvm"

    def nested():
        (result,) = run_preflight(dataclasses.replace(context_for(lab), nested_required=need), ["nested"])
        print(f"nested: {result.line()}")
        return result

    dst = lab.hosts[1]
    modules = dst.run("cd /sys/module && ls -d kvm_amd kvm_intel 2>/dev/null", check=False).stdout.split()
    first = nested()
    if not modules:  # the VMs show no vmx/svm: nesting is off, the check must say so
        ok = first.status == FAIL and "/dev/kvm no" in first.seen
        return [] if ok else [f"nested should fail on host VMs without KVM: {first.line()}"]
    problems = [] if first.status == PASS and "nested virtualization on" in first.seen else \
        [f"nested should pass: {dst.name} has {modules} loaded: {first.line()}"]
    dst.run(f"modprobe -r {modules[0]}")
    try:
        broken = nested()
        if broken.status != FAIL or "/dev/kvm no" not in broken.seen or f"kvm_amd on {dst.name}" not in broken.remedy:
            problems.append(f"nested should fail with {modules[0]} unloaded on {dst.name}: {broken.line()}")
    finally:
        dst.run(f"modprobe {modules[0]}")
    again = nested()
    if again.status != PASS:
        problems.append(f"nested should pass again after modprobe {modules[0]}: {again.line()}")
    return problems


def _clock_check_on(config) -> list[str]:
    """clock-sync passes on the lab as provisioned, fails once hv2's chrony is stopped and its clock stepped
    5 s ahead, and passes again once chrony has brought it back."""
    from lab.preflight import FAIL, PASS, context_for, run_preflight
    from lab.runtime.lab import Lab
    from lab.backends.vagrant.timeserver import wait_for_clock

    lab = Lab.load(config)
    dst = lab.hosts[1]

    def clock():
        (result,) = run_preflight(context_for(lab), ["clock-sync"])
        print(f"clock-sync: {result.line()}")
        return result

    problems = []
    if (first := clock()).status != PASS or "reference " + config.network.runner_address not in first.seen:
        problems.append(f"clock-sync should pass on the provisioned lab: {first.line()}")
    dst.run("systemctl stop chrony && date -s '+5 seconds' >/dev/null")
    try:
        broken = clock()
        if broken.status != FAIL or f"{dst.name}'s clock is at least" not in broken.seen or "ahead of" not in broken.seen:
            problems.append(f"clock-sync should fail with {dst.name} 5 s ahead: {broken.line()}")
    finally:
        dst.run("systemctl start chrony")
        wait_for_clock(dst, config.network.runner_address)
    if (again := clock()).status != PASS:
        problems.append(f"clock-sync should pass again once chrony is back: {again.line()}")
    return problems


@pytest.mark.vagrant
@pytest.mark.slow
def test_vagrant_lab_end_to_end(record_property, tmp_path):
    """Box (built if missing), `lab up`, idempotent playbook, preflight + live migration suites, `lab down`."""
    why = _vagrant_with_libvirt()
    if why:
        pytest.skip(why)
    if not shutil.which("ansible-playbook"):
        pytest.skip("ansible-playbook is not installed (apt-get install ansible-core ansible)")
    if os.geteuid() != 0:
        pytest.skip("the Vagrant lab needs root (libvirt system connection, box build)")
    config_path = Path(os.environ.get("LAB_VAGRANT_CONFIG", TCG_YAML))
    # The lab's own limits (a nested lab is slower than the embedded one the repo's thresholds.yaml is for).
    thresholds = Path(os.environ.get("LAB_VAGRANT_THRESHOLDS", REPO / "labs" / "vagrant-tcg.thresholds.yaml"))
    config = parse_lab_config(yaml.safe_load(config_path.read_text()), str(config_path))
    spec = check_lab(config)
    report = Path(os.environ.get("LAB_VAGRANT_TIMINGS", tmp_path / "timings.json"))
    # One entry per run, appended: the steps' seconds with the machine's load beside them (a shared
    # runner's figures mean little without it). Speed goals are read from here, never asserted.
    try:
        runs = json.loads(report.read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        runs = []
    timings: dict[str, float] = {}
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "lab_config": str(config_path),
             "box_present": not (spec.box_url and spec.box_url.startswith("/") and not Path(spec.box_url).exists()),
             "load_at_start": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), "steps": timings}
    runs.append(entry)

    def write_report() -> None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"runs": runs}, indent=2))

    def done(step: str, seconds: float) -> None:
        timings[step] = round(seconds, 1)
        entry["load_at_" + step] = [round(x, 2) for x in os.getloadavg()]
        record_property(f"{step}_s", timings[step])
        write_report()

    run_started = time.monotonic()
    if spec.box_url and spec.box_url.startswith("/") and not Path(spec.box_url).exists():
        started = time.monotonic()
        built = boxmod.build(spec.box, Path(spec.box_url).parent)
        assert built.box == Path(spec.box_url), "vagrant.box_url must be where `box build --name BOX` puts it"
        done("box_build", time.monotonic() - started)

    failures: list[str] = []  # collected, so that `down` and its checks always run and every failure shows
    try:
        proc, took = _lab("up", config=config_path)
        logs = report.parent / "vagrant-last-run"  # the last run's `lab up` and playbook output, to read steps from
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "lab-up.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"lab up failed:\n{proc.stderr[-4000:]}"
        done("lab_up", took)
        proc, _ = _lab("status", "--json", config=config_path)
        status = json.loads(proc.stdout)
        assert status["up"] and status["backend"] == "vagrant"
        assert [h["name"] for h in status["hosts"]] == [h.name for h in config.hosts]
        assert status["vagrant"]["vms"] and all(s == "running" for s in status["vagrant"]["vms"].values())
        for step, seconds in status["vagrant"]["timings"].items():
            done(f"up_{step.removesuffix('_s')}", seconds)
        entry["up_mode"] = "warm" if status["vagrant"]["resumed_from"] else "fresh"
        entry["accelerator"], entry["inner_figures"] = status["accelerator"], status["vagrant"]["inner"]
        write_report()
        # The guests' accelerator was measured inside the VMs (now or when the cached VMs were made).
        # The fill speed the agent's waits follow was measured in this boot, at the suites' size.
        fill = entry["fill_check"] = status["vagrant"]["fill_check"]
        write_report()
        assert fill.get("mib") == 32 and fill.get("accel") == status["accelerator"], status
        assert fill["fill_mibs"] > 0 and status["vagrant"]["fill_mibs"] == fill["fill_mibs"], status

        # The playbook again: a second run changes nothing.
        from lab.backends.vagrant.driver import VagrantLab

        work = Path(status["vagrant"]["work_dir"])
        started = time.monotonic()
        last = machines(config, spec)[-1].name  # the machine that carries the ansible provisioner
        lines = list(VagrantLab(work, work / "settings.json").provision_lines(last))
        (logs / "playbook-again.log").write_text("\n".join(lines) + "\n")
        recap = [line for line in lines if " : ok=" in line]
        done("provision_again", time.monotonic() - started)
        if not recap:
            failures.append("no PLAY RECAP from the second provisioning run")
        for line in recap:
            if not (re.search(r"\bchanged=0\b", line) and re.search(r"\bfailed=0\b", line)):
                failures.append(f"playbook not idempotent: {line.strip()}")

        # -m "not timing": the suites' speed budgets are the embedded lab's (doctor within 10 s; 22 s here
        # on TCG VMs); the Vagrant lab's speed goes to the timings file, not into verdicts.
        for name, args in (("preflight_suite", ["suites/preflight", "-m", "not timing"]),
                           ("live_migration_precopy_idle", ["suites/live_migration", "-k", "precopy-idle",
                                                            "--repeat", "1", "--thresholds", str(thresholds)])):
            started = time.monotonic()
            run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", *args,
                                  "--lab-config", str(config_path), "--keep-lab"], cwd=REPO, capture_output=True,
                                 text=True, timeout=3600)
            done(name, time.monotonic() - started)
            summary = (run.stdout.strip().splitlines() or ["no output"])[-1]
            record_property(f"{name}_summary", summary)
            if run.returncode != 0 or " passed" not in summary:
                errors = [line for line in run.stdout.splitlines() if line.startswith(("E   ", "FAILED ", "ERROR "))][:4]
                failures.append(f"{name}: {summary} {' | '.join(e.strip() for e in errors)}")
        failures += _nested_check_on(config)
        failures += _clock_check_on(config)
    except BaseException as exc:
        entry["result"] = f"failed: {str(exc)[:300]}"
        raise
    finally:
        before = json.loads((Path("/var/lib/kvm-acceptance-lab") / config.name / "state.json").read_text()) \
            if (Path("/var/lib/kvm-acceptance-lab") / config.name / "state.json").exists() else {}
        proc, took = _lab("down", config=config_path)
        done("lab_down", took)
        entry["total"] = round(time.monotonic() - run_started, 1)
        entry["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        entry.setdefault("result", ("failed: " + "; ".join(failures))[:400] if failures else "failed: after down")
        write_report()
    assert proc.returncode == 0, proc.stderr[-2000:]
    prefix = f"{config.name}-"
    assert not [d for d in _virsh("list", "--all", "--name").split() if d.startswith(prefix)]
    assert not [n for n in _virsh("net-list", "--all", "--name").split() if n.startswith(prefix)]
    assert config.name not in _virsh("pool-list", "--all", "--name").split()
    assert not (Path("/var/lib/kvm-acceptance-lab") / config.name).exists()
    assert not (Path("/var/lib/libvirt/images") / config.name).exists(), "the lab's storage pool directory is left"
    dnsmasq = [p for p in Path("/proc").glob("[0-9]*/cmdline") if f"dnsmasq/{prefix}".encode() in _read(p)]
    assert not dnsmasq, f"dnsmasq of the lab's networks still running: {dnsmasq}"
    for daemon, pid in ((before.get("vagrant") or {}).get("daemons") or {}).items():
        assert not Path(f"/proc/{pid}").exists() or daemon not in Path(f"/proc/{pid}/cmdline").read_text(), \
            f"the root {daemon} this lab started (PID {pid}) is still running"
    if spec.keep_provisioned and spec.provision:  # a cache, kept outside the checkout and the lab's own dirs
        from lab.backends.vagrant import cache

        assert cache.manifest(config.name), f"no provisioned-VM cache kept in {cache.cache_dir(config.name)}"
        assert not cache.cache_dir(config.name).is_relative_to(REPO)
    assert not failures, "\n".join(failures)
    entry["result"] = "passed"
    write_report()

"""The Vagrant lab's settings: validation of lab.yaml's `vagrant:` block, the rendered Vagrantfile
settings, and `vagrant validate` on them (skipped with the reason where vagrant-libvirt is missing)."""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
import yaml

from lab.backends.vagrant.render import REPO_VAGRANTFILE, machines, settings_document, vm_mac, write_work_dir
from lab.config.lab import parse_lab_config
from lab.config.vagrant import DEFAULT_BOX, VagrantSpec, check_lab, nfs_server_address, parse_vagrant_settings
from lab.errors import BackendError, ConfigError
from tests.vagrant_tools import (
    EXAMPLE_YAML,
    FORBIDDEN,
    LAB_RANGE,
    REPO,
    STACKS_YAML,
    TCG_YAML,
    vagrant_config,
    vagrant_doc,
    vagrant_with_libvirt,
)


# -- settings ---------------------------------------------------------------------------------------

def test_shipped_vagrant_configs_load():
    for path in (TCG_YAML, EXAMPLE_YAML, STACKS_YAML):
        config = vagrant_config(path)
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
        vagrant_config(**{f"vagrant.{key}": value})
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_vagrant_mapping_must_be_a_mapping():
    data = vagrant_doc(TCG_YAML)
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
    config = vagrant_config(**change)
    with pytest.raises(ConfigError) as err:
        check_lab(config)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_local_storage_needs_no_nfs_server():
    config = vagrant_config(storage="local", **{"vagrant.nfs_server": "none"})
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
    config = vagrant_config(source).model_copy(update={"storage": storage})
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
    config = vagrant_config(STACKS_YAML)
    stack = {"name": "bookworm-backports", "suite": "bookworm-backports", "packages": ["qemu-system-x86=1:10.0.2"]}
    doc = settings_document(config, check_lab(config), driver="qemu", lab_dir=tmp_path, work_dir=tmp_path,
                            public_key="k", stacks={"hv2": stack})
    # An extra var (JSON), not a host var: Vagrant writes host vars as INI text, a dict arriving as a string.
    assert doc["provision"]["extra_vars"]["lab_stacks"] == {"hv2": stack}
    assert not any("lab_stack" in v for v in doc["provision"]["host_vars"].values())
    roles = yaml.safe_load((REPO / "provision/site.yml").read_text())[-1]["roles"]
    assert [r["role"] for r in roles][:2] == ["stack", "hypervisor"]  # installed before libvirt is configured


def test_work_dir_stub_loads_the_repo_vagrantfile(tmp_path):
    config = vagrant_config()
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
    why = vagrant_with_libvirt()
    if why:
        pytest.skip(why)
    from lab.backends.vagrant.driver import VagrantLab

    config = vagrant_config(EXAMPLE_YAML if storage != "local" else TCG_YAML).model_copy(update={"storage": storage})
    doc = settings_document(config, check_lab(config), driver=driver, lab_dir=tmp_path, work_dir=tmp_path,
                            public_key="ssh-ed25519 K")
    settings = write_work_dir(tmp_path, doc)
    out = VagrantLab(tmp_path, settings).validate()
    assert "validated successfully" in out


def test_vagrant_validate_catches_a_bad_setting(tmp_path):
    why = vagrant_with_libvirt()
    if why:
        pytest.skip(why)
    from lab.backends.vagrant.driver import VagrantLab

    config = vagrant_config()
    doc = settings_document(config, check_lab(config), driver="qemu", lab_dir=tmp_path, work_dir=tmp_path,
                            public_key="k")
    doc["box"] = ""
    settings = write_work_dir(tmp_path, doc)
    with pytest.raises(BackendError, match="Box value for guest 'hv1' is an empty string"):
        VagrantLab(tmp_path, settings).validate()

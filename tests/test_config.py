"""lab.yaml validation: every malformed file gives one line naming the field."""
import subprocess
import sys
import textwrap

import pytest
import yaml

from lab.config.lab import DEFAULT_LAB_CONFIG, load_lab_config, parse_lab_config
from lab.errors import ConfigError

BAD = {
    "host-address-not-ipv4": ("hosts:\n  - {name: hv1, address: 198.18.0.11}\n  - {name: hv2, address: 300.1.1.1}\n",
                              "hosts[1].address: '300.1.1.1' is not an IPv4 address"),
    "unknown-backend": ("backend: docker\n", "backend: 'docker' is not one of embedded, vagrant, static"),
    "unknown-key": ("hostz: []\n", "hostz: unknown key"),
    "accelerator-typo": ("accelerator: kvmm\n", "accelerator: 'kvmm' is not one of auto, kvm, tcg"),
    "storage-typo": ("storage: nfs4\n", "storage: 'nfs4' is not one of shared, nfs, local"),
    "private-subnet": ("network: {subnet: 192.168.121.0/24, runner_address: 192.168.121.1}\n",
                       "network.subnet: 192.168.121.0/24 overlaps private range 192.168.0.0/16"),
    "subnet-outside-lab-range": ("network: {subnet: 8.8.8.0/24, runner_address: 8.8.8.1, guest_range: 8.8.8.128/25}\n",
                                 "network.subnet: 8.8.8.0/24 is outside 198.18.0.0/15"),
    "host-outside-subnet": ("hosts:\n  - {name: hv1, address: 198.18.0.11}\n  - {name: hv2, address: 198.19.0.12}\n",
                            "hosts[1].address: 198.19.0.12 is not inside network.subnet 198.18.0.0/16"),
    "duplicate-name": ("hosts:\n  - {name: hv1, address: 198.18.0.11}\n  - {name: hv1, address: 198.18.0.12}\n",
                       "hosts[1].name: 'hv1' is used twice"),
    "duplicate-address": ("hosts:\n  - {name: hv1, address: 198.18.0.11}\n  - {name: hv2, address: 198.18.0.11}\n",
                          "hosts[1].address: 198.18.0.11 is used twice"),
    "one-host": ("hosts:\n  - {name: hv1, address: 198.18.0.11}\n", "hosts: the embedded lab needs at least 2 hosts"),
    "bad-host-name": ("hosts:\n  - {name: HV_1, address: 198.18.0.11}\n  - {name: hv2, address: 198.18.0.12}\n",
                      "hosts[0].name: 'HV_1' is not a host name"),
    "missing-address": ("hosts:\n  - {name: hv1}\n  - {name: hv2, address: 198.18.0.12}\n", "hosts[0].address: missing"),
    "memory-not-int": ("guest: {memory_mib: lots}\n", "guest.memory_mib: 'lots' is not a whole number"),
    "memory-too-small": ("guest: {memory_mib: 16}\n", "guest.memory_mib: 16 is out of range (64 to 65536)"),
    "heartbeat-too-slow": ("guest: {heartbeat_us: 5000}\n", "guest.heartbeat_us: 5000 is out of range (100 to 1000)"),
    "hosts-not-list": ("hosts: hv1\n", "hosts: expected a non-empty list"),
    "top-not-mapping": ("- a\n- b\n", "lab.yaml: expected a mapping, got list"),
    "not-yaml": ("hosts: [unclosed\n", "not valid YAML at line"),
    "pair-unknown-host": ("pairs: [[hv1, hv9]]\n", "pairs[0]: unknown host 'hv9' (hosts: hv1, hv2)"),
    "pair-one-host": ("pairs: [[hv1]]\n", "pairs[0]: expected [source, destination], got ['hv1']"),
    "pair-same-host": ("pairs: [[hv2, hv2]]\n", "pairs[0]: a pair needs two different hosts, got 'hv2' twice"),
    "host-in-two-pairs": ("hosts:\n" + "".join(f"  - {{name: hv{i}, address: 198.18.0.1{i}}}\n" for i in (1, 2, 3))
                          + "pairs: [[hv1, hv2], [hv3, hv1]]\n",
                          "pairs[1]: host 'hv1' is already in another pair"),
    "runner-in-guest-range": ("network: {runner_address: 198.18.200.1}\n",
                              "network.runner_address: 198.18.200.1 lies inside network.guest_range"),
}


@pytest.mark.parametrize("text,expected", list(BAD.values()), ids=list(BAD))
def test_malformed_lab_yaml_gives_one_line_naming_the_field(tmp_path, text, expected):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_lab_config(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(path))


def test_default_lab_yaml_is_valid_and_matches_documented_defaults():
    config = load_lab_config(DEFAULT_LAB_CONFIG)
    assert [h.name for h in config.hosts] == ["hv1", "hv2"]
    assert config.backend == "embedded" and config.accelerator == "auto"
    assert config == parse_lab_config({}, config.source)


def test_missing_lab_yaml_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"lab config not found \(pass --lab-config PATH or set LAB_CONFIG\)"):
        load_lab_config(tmp_path / "nope.yaml")


def test_lab_config_env_var_picks_another_file(tmp_path, monkeypatch):
    path = tmp_path / "other.yaml"
    path.write_text("name: other\naccelerator: tcg\n")
    monkeypatch.setenv("LAB_CONFIG", str(path))
    assert load_lab_config().name == "other"


@pytest.mark.parametrize("text,expected", [BAD["host-address-not-ipv4"], BAD["not-yaml"]],
                         ids=["bad-address", "bad-yaml"])
def test_cli_prints_one_line_and_no_traceback(tmp_path, text, expected):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "lab", "--lab-config", str(path), "up"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_host_is_one_line():
    with pytest.raises(ConfigError, match=r"unknown host 'hv9': this lab has hv1, hv2"):
        load_lab_config(DEFAULT_LAB_CONFIG).host("hv9")


def test_config_from_string_documents_the_yaml_shape():
    config = parse_lab_config(yaml_doc := __import__("yaml").safe_load(textwrap.dedent("""
        name: other
        storage: local
        guest: {memory_mib: 128, vcpus: 2}
    """)))
    assert yaml_doc["storage"] == config.storage == "local"
    assert (config.guest.memory_mib, config.guest.vcpus) == (128, 2)


def test_pairs_default_to_consecutive_hosts():
    five = "hosts:\n" + "".join(f"  - {{name: hv{i}, address: 198.18.0.1{i}}}\n" for i in range(1, 6))
    assert parse_lab_config({}).pairs == (("hv1", "hv2"),)
    assert parse_lab_config(yaml.safe_load(five)).pairs == (("hv1", "hv2"), ("hv3", "hv4"))  # hv5 joins none
    assert parse_lab_config(yaml.safe_load(five + "pairs: [[hv5, hv1]]\n")).pairs == (("hv5", "hv1"),)

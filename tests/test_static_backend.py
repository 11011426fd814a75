"""The static backend, tested against real SSH + libvirt hosts: an embedded lab's, described as an inventory."""
from __future__ import annotations

import json
import re

import pytest

from lab.backends import get_backend
from lab.config import load_lab_config
from lab.guest.domain import create_guest, remove_guest
from lab.migration import MigrationParams, migrate
from lab.session import Lab
from lab.state import lab_dir
from tests.labtools import lab_cli, write_lab_config

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("static-lab")]


@pytest.fixture(scope="module")
def real_hosts(tmp_path_factory):
    """An embedded lab whose hosts play the existing machines."""
    config = load_lab_config(write_lab_config(tmp_path_factory.mktemp("real"), "kvmreal", 40))
    backend = get_backend(config)
    backend.up(lambda _m: None)
    yield config, backend
    backend.down(lambda _m: None)


@pytest.fixture
def inventory(real_hosts, tmp_path):
    key = lab_dir("kvmreal") / "id_ed25519"
    path = tmp_path / "static.yaml"
    path.write_text(
        "name: kvmsta\nbackend: static\n"
        "network: {subnet: 198.19.40.0/24, runner_address: 198.19.40.1, guest_range: 198.19.40.128/25}\n"
        "hosts:\n"
        f"  - {{name: hv1, address: 198.19.40.11, ssh_user: root, ssh_key: {key}}}\n"
        f"  - {{name: hv2, address: 198.19.40.12, ssh_user: root, ssh_key: {key}}}\n")
    yield path
    lab_cli(path, "down")


def test_static_lab_comes_up_on_existing_hosts_and_migrates(inventory, shared_lab):
    up = lab_cli(inventory, "up")
    assert up.returncode == 0, up.stderr
    status = json.loads(lab_cli(inventory, "status", "--json").stdout)
    assert status["backend"] == "static" and [h["name"] for h in status["hosts"]] == ["hv1", "hv2"]
    assert all(h["libvirt_version"] for h in status["hosts"])
    lab = Lab.load(load_lab_config(inventory))
    src, dst = lab.hosts
    guest = create_guest(lab, src)
    try:
        result = migrate(guest.name, src, dst, MigrationParams(unsafe=lab.needs_unsafe("shared"),
                                                               migrate_uri=f"tcp://{dst.address}"))
        assert result.ok, result.error
        guest.host = dst
        assert guest.info()["boot_id"] == guest.boot_id
    finally:
        remove_guest(lab, guest)
    down = lab_cli(inventory, "down")
    assert down.returncode == 0 and "left as they were" in down.stderr
    assert get_backend(load_lab_config(inventory)).is_up() is False


def test_static_lab_refuses_an_unready_pair_with_the_doctors_table(real_hosts, inventory, shared_lab):
    """Hosts answer, but hv2's firewall drops the migration ports: preflight refuses, with the table."""
    _, backend = real_hosts
    backend.host_exec("hv2", "nft", "add", "table", "inet", "static_break")
    backend.host_exec("hv2", "nft", "add", "chain", "inet", "static_break", "input",
                      "{ type filter hook input priority 0; }")
    backend.host_exec("hv2", "nft", "add", "rule", "inet", "static_break", "input", "tcp", "dport", "49152-49215", "drop")
    try:
        up = lab_cli(inventory, "up")
    finally:
        backend.host_exec("hv2", "nft", "delete", "table", "inet", "static_break")
    assert up.returncode == 2
    assert re.search(r"migration-ports +FAIL", up.stderr) and re.search(r"ssh-access +PASS", up.stderr)  # the table
    errors = [line for line in up.stderr.splitlines() if line.startswith("lab: error:")]
    assert errors == ["lab: error: hosts hv1 -> hv2 are not ready for migration: migration-ports failed "
                      "(table above; `python -m lab doctor`)"], up.stderr
    assert not get_backend(load_lab_config(inventory)).is_up()


def test_static_inventory_without_a_key_is_one_line(tmp_path):
    path = write_lab_config(tmp_path, "kvmsta2", 41, backend="static")
    proc = lab_cli(path, "up")
    assert proc.returncode == 2
    assert "hosts[0].ssh_key: missing" in proc.stderr and "Traceback" not in proc.stderr

"""The static backend, tested against real SSH + libvirt hosts: an embedded lab's, described as an inventory."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab.backends import get_backend
from lab.config.lab import load_lab_config
from lab.guest.domain import create_guest, remove_guest
from lab.migration.live import MigrationParams, migrate
from lab.runtime.lab import Lab
from lab.runtime.layout import LabLayout
from tests.labtools import lab_cli, write_lab_config

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("static-lab")]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_hosts(tmp_path_factory):
    """An embedded lab whose hosts play the existing machines."""
    config = load_lab_config(write_lab_config(tmp_path_factory.mktemp("real"), "kvmreal", 40))
    backend = get_backend(config)
    backend.up(lambda _m: None)
    yield config, backend
    backend.down(lambda _m: None)


def write_inventory(path: Path, name: str, hosts_of: str, third_octet: int, count: int = 2, extra: str = "") -> Path:
    """A static inventory of the embedded lab `hosts_of`'s hosts hv1..hvN on 198.19.<third_octet>.0/24."""
    key = LabLayout(hosts_of).dir / "id_ed25519"
    net = f"198.19.{third_octet}"
    path.write_text(
        f"name: {name}\nbackend: static\n"
        f"network: {{subnet: {net}.0/24, runner_address: {net}.1, guest_range: {net}.128/25}}\n"
        "hosts:\n" + "".join(f"  - {{name: hv{i}, address: {net}.1{i}, ssh_user: root, ssh_key: {key}}}\n"
                             for i in range(1, count + 1)) + extra)
    return path


@pytest.fixture
def inventory(real_hosts, tmp_path):
    path = write_inventory(tmp_path / "static.yaml", "kvmsta", "kvmreal", 40)
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
    assert errors == ["lab: error: hosts hv1 -> hv2 are not ready for migration: migration-ports, bandwidth failed "
                      "(table above; `python -m lab doctor --src hv1 --dst hv2`)"], up.stderr
    assert not get_backend(load_lab_config(inventory)).is_up()


def test_static_inventory_without_a_key_is_one_line(tmp_path):
    path = write_lab_config(tmp_path, "kvmsta2", 41, backend="static")
    proc = lab_cli(path, "up")
    assert proc.returncode == 2
    assert "hosts[0].ssh_key: missing" in proc.stderr and "Traceback" not in proc.stderr


# -- several host pairs, taken by xdist workers --------------------------------------------------

POOL_PROBE = textwrap.dedent('''
    """Run by every xdist worker (--dist each): migrate a guest on the pair this worker took."""
    import json, os
    from pathlib import Path

    from lab.guest.domain import create_guest, remove_guest
    from lab.migration.live import MigrationParams, migrate
    from lab.results.evidence import collect

    def test_migrate_on_my_pair(lab, shared_lab):
        src, dst = lab.hosts
        guest = create_guest(lab, src)
        evidence = ""
        try:
            result = migrate(guest.name, src, dst, MigrationParams(unsafe=lab.needs_unsafe("shared"),
                                                                   migrate_uri=f"tcp://{dst.address}"))
            guest.host = dst
            same_boot = result.ok and guest.info()["boot_id"] == guest.boot_id
            if not same_boot:  # both hosts' libvirtd log tails into the failure message: CI keeps nothing else
                kept = collect(lab, guest.name, Path(os.environ["POOL_OUT"]) / "evidence", result)
                evidence = "\\n".join(f"--- {p.name}\\n" + "\\n".join(p.read_text().splitlines()[-15:])
                                      for p in kept if p.name.endswith("libvirtd.log"))
        finally:
            remove_guest(lab, guest)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(os.environ["POOL_OUT"], worker + ".json").write_text(json.dumps(
            {"worker": worker, "pair": [src.name, dst.name], "ok": result.ok, "error": result.error,
             "same_boot": same_boot}))
        assert same_boot, f"{result.error}\\n{evidence}"
''')


@pytest.fixture(scope="module")
def four_hosts(tmp_path_factory):
    """An embedded lab of four hosts: two pairs of existing machines."""
    folder = tmp_path_factory.mktemp("real4")
    config = load_lab_config(write_lab_config(folder, "kvmreal4", 42, count=4))
    assert [h.name for h in config.hosts] == ["hv1", "hv2", "hv3", "hv4"]
    backend = get_backend(config)
    backend.up(lambda _m: None)
    yield config
    backend.down(lambda _m: None)


def test_xdist_workers_take_separate_host_pairs_from_the_pool(four_hosts, tmp_path):
    # No shared_lab here: the inner workers take the measurement lock themselves. Holding it out here
    # deadlocked CI: a measuring test's exclusive request queued behind us, the inner readers behind it.
    inventory = write_inventory(tmp_path / "pool.yaml", "kvmpool", "kvmreal4", 42, count=4,
                                extra="pairs: [[hv1, hv2], [hv4, hv3]]\n")
    try:
        up = lab_cli(inventory, "up", timeout=300)
        assert up.returncode == 0, up.stderr
        assert "preflight hv1 -> hv2: ready" in up.stderr and "preflight hv4 -> hv3: ready" in up.stderr
        assert json.loads(lab_cli(inventory, "status", "--json").stdout)["pairs"] == [["hv1", "hv2"], ["hv4", "hv3"]]
        probe = tmp_path / "test_pool_probe.py"
        probe.write_text(POOL_PROBE)
        out = tmp_path / "out"
        out.mkdir()
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", "lab.pytest_plugin", "-p", "no:randomly",
                              "-p", "no:cacheprovider", "-n", "2", "--dist", "each", "-q", str(probe),
                              "--lab-config", str(inventory), "--keep-lab", "--report-dir", str(tmp_path / "rep")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "POOL_OUT": str(out), "PYTHONPATH": str(REPO)})
        errors = [line for line in run.stdout.splitlines() if line.startswith("E ") or "Error" in line]
        assert run.returncode == 0, "\n".join(errors[:12]) + run.stdout[-6000:] + run.stderr[-1500:]
        records = sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda r: r["worker"])
        assert [r["worker"] for r in records] == ["gw0", "gw1"], records
        assert sorted(tuple(r["pair"]) for r in records) == [("hv1", "hv2"), ("hv4", "hv3")], records
        assert all(r["ok"] and r["same_boot"] for r in records), records
    finally:
        lab_cli(inventory, "down")


CLAIMER = textwrap.dedent('''
    import json, sys, types
    from pathlib import Path
    from lab.runtime import pairs
    host = lambda name: types.SimpleNamespace(name=name)
    pool = [(host("a"), host("b")), (host("c"), host("d"))]
    folder = Path(sys.argv[1]) / "pairs"
    claim = pairs.claim_pair("pooltest", pool, folder, sys.argv[2])
    assert pairs.claim_pair("pooltest", pool, folder, sys.argv[2]) == claim  # one claim per process
    print(json.dumps([claim.src, claim.dst, claim.exclusive]), flush=True)
    sys.stdin.read()  # hold the claim until told to go
''')


def test_pair_claims_are_exclusive_and_freed_when_a_worker_is_killed(tmp_path):
    """Real flocks between real processes: two workers get two pairs, a third shares, and a killed
    worker's pair is free again at once (the kernel drops its lock)."""
    def start(worker: str) -> tuple[subprocess.Popen, list]:
        proc = subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path), worker], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
        return proc, json.loads(proc.stdout.readline())

    first, claim0 = start("gw0")
    second, claim1 = start("gw1")
    third, claim2 = start("gw2")
    try:
        assert claim0 == ["a", "b", True] and claim1 == ["c", "d", True], (claim0, claim1)
        assert claim2 == ["a", "b", False], claim2  # every pair taken: gw2 shares (2 % 2 = pair 0)
        first.kill()
        first.wait()
        fourth, claim3 = start("gw0")
        assert claim3 == ["a", "b", True], claim3
        fourth.kill()
        fourth.wait()
    finally:
        for proc in (first, second, third):
            proc.kill()
            proc.wait()


def test_static_hosts_must_run_the_stack_lab_yaml_names(real_hosts, tmp_path, shared_lab):
    """A static host's stack is what must be installed there: up checks what its libvirtd reports."""
    key = LabLayout("kvmreal").dir / "id_ed25519"

    def inventory(qemu: str, libvirt: str) -> Path:
        path = tmp_path / f"stack-{qemu}.yaml"
        path.write_text("name: kvmsta3\nbackend: static\n"
                        "network: {subnet: 198.19.40.0/24, runner_address: 198.19.40.1, guest_range: 198.19.40.128/25}\n"
                        f"stacks: {{candidate: {{source: archive, qemu: '{qemu}', libvirt: '{libvirt}'}}}}\n"
                        f"hosts:\n  - {{name: hv1, address: 198.19.40.11, ssh_user: root, ssh_key: {key}}}\n"
                        f"  - {{name: hv2, address: 198.19.40.12, ssh_user: root, ssh_key: {key}, stack: candidate}}\n")
        return path

    newer = inventory("10.0.2", "11.3.0")
    try:
        up = lab_cli(newer, "up")
        errors = [line for line in up.stderr.splitlines() if line.startswith("lab: error")]
        assert up.returncode == 2 and len(errors) == 1 and "Traceback" not in up.stderr, up.stderr
        assert "hv2: runs QEMU 7.2" in up.stderr and "where stack 'candidate' has 10.0.2" in up.stderr
        assert "install the stack with the playbook (role stack; `python -m lab.stacks --lab-config LAB.yaml pins`" in up.stderr
        assert get_backend(load_lab_config(newer)).is_up() is False
    finally:
        lab_cli(newer, "down")
    versions = real_hosts[1].status()["hosts"][1]
    same = inventory(versions["qemu_version"], versions["libvirt_version"])
    try:
        assert lab_cli(same, "up").returncode == 0
        status = json.loads(lab_cli(same, "status", "--json").stdout)
        assert status["hosts"][1]["stack"]["name"] == "candidate", status["hosts"][1]
    finally:
        lab_cli(same, "down")

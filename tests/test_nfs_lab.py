"""storage: nfs in the embedded lab: a real NFSv3 server (nfs-ganesha) on a lab host of its own.

Guests' disks are reached through QEMU's NFS block driver, so libvirt sees
network disks, i.e. shared storage: live migration needs no --unsafe.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.backends import get_backend
from lab.migration.cold import cold_migrate, cold_preflight
from lab.config.lab import load_lab_config
from lab.guest.domain import create_guest, remove_guest
from lab.migration.integrity import check_intact, take_fingerprint
from lab.migration.live import MigrationParams, migrate
from lab.preflight import PASS, context_for, run_preflight
from lab.runtime.lab import Lab
from tests.labtools import leftovers, nothing_left, processes_mentioning, write_lab_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("nfs-lab")]


@pytest.fixture(scope="module")
def nfs_lab(tmp_path_factory):
    # The session lab's stack: disks use QEMU's own NFS client (libnfs), which build stacks compile in.
    path = write_lab_config(tmp_path_factory.mktemp("nfs"), "kvmnfst", 31, storage="nfs")
    config = load_lab_config(path)
    backend = get_backend(config)
    backend.up(lambda _m: None)
    yield Lab.load(config), path
    backend.down(lambda _m: None)
    assert nothing_left("kvmnfst"), leftovers("kvmnfst")


def test_nfs_server_is_ganesha_in_its_own_lab_host(nfs_lab, shared_lab):
    lab, _ = nfs_lab
    assert lab.nfs_address == "198.19.31.10"
    status = lab.describe(versions=False)
    assert status["storage"]["mode"] == "nfs" and status["storage"]["nfs_server"] == "198.19.31.10"
    assert any("ganesha.nfsd" in cmd for _pid, cmd in processes_mentioning(str(lab.dir)))


def test_live_migration_over_nfs_needs_no_unsafe_and_keeps_the_disk(nfs_lab, shared_lab):
    lab, _ = nfs_lab
    src, dst = lab.hosts
    guest = create_guest(lab, src)
    try:
        xml = guest.domain().XMLDesc(0)
        assert "protocol='nfs'" in xml and "<host name='198.19.31.10'/>" in xml
        (mode,) = run_preflight(context_for(lab, guest=guest.name), ["storage-mode"])
        assert mode.status == PASS and "NFS (NFSv3 export on 198.19.31.10" in mode.seen, mode.line()
        before = take_fingerprint(guest)
        params = MigrationParams(unsafe=lab.needs_unsafe("shared"), migrate_uri=f"tcp://{dst.address}")
        assert not params.unsafe
        result = migrate(guest.name, src, dst, params)
        assert result.ok, result.error
        guest.host = dst
        assert check_intact(guest, before, lab.hosts, dst) == []
    finally:
        remove_guest(lab, guest)


def test_cold_migration_over_nfs_moves_no_disk_bytes(nfs_lab, shared_lab):
    lab, _ = nfs_lab
    src, dst = lab.hosts
    guest = create_guest(lab, src)
    try:
        disk_sum = guest.agent("diskwrite", 9, 4, timeout=60)["sum"]
        cold_preflight(lab, guest, dst, copy=False)
        result = cold_migrate(guest, src, dst, copy=False)
        assert result.ok, result.error
        assert result.bytes_copied == 0
        assert guest.agent("disksum", 4, timeout=60)["sum"] == disk_sum
    finally:
        remove_guest(lab, guest)


def test_cold_suite_is_green_on_the_nfs_lab(nfs_lab, tmp_path):
    # No shared_lab here: the inner run takes the measurement lock itself.
    _, path = nfs_lab
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/cold_migration", "-q", "-k", "shared",
                           "--lab-config", str(path), "--report-dir", str(tmp_path), "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "passed" in proc.stdout.splitlines()[-1]
    assert "| shared | live |" in (tmp_path / "contrast.md").read_text()

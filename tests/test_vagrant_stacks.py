"""A Vagrant host on another stack, installed by the playbook (role stack), then migrated across versions.

labs/vagrant-stacks.yaml: hv1 keeps Debian 12's QEMU 7.2 / libvirt 9.0, hv2 gets bookworm-backports' QEMU
10.0.2 / libvirt 11.3.0 from the playbook at the exact versions `up` resolved; `up` checks what hv2's
libvirtd reports, and suites/cross_version migrates both ways. Slow (two TCG VMs, an apt install in
one): `make vagrant-test` runs it, `make test` does not.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vagrant_tools import REPO, run_lab, vagrant_with_libvirt, virsh

STACKS_YAML = Path(os.environ.get("LAB_VAGRANT_STACKS_CONFIG", REPO / "labs" / "vagrant-stacks.yaml"))
THRESHOLDS = REPO / "thresholds.yaml"  # the model, calibrated on this lab


@pytest.mark.vagrant
@pytest.mark.slow
def test_a_vagrant_host_runs_the_archive_stack_the_playbook_installed(record_property):
    why = vagrant_with_libvirt()
    if why:
        pytest.skip(why)
    if not shutil.which("ansible-playbook") or os.geteuid() != 0:
        pytest.skip("the Vagrant lab needs root and ansible-playbook (apt-get install ansible-core ansible)")
    try:
        proc, took = run_lab("up", config=STACKS_YAML)
        record_property("lab_up_s", round(took, 1))
        failed = [line for line in proc.stderr.splitlines() if "fatal:" in line or "lab: error" in line]
        assert proc.returncode == 0, "\n".join(failed)[:3000] + "\n" + proc.stderr[-2500:]
        status = json.loads(run_lab("status", "--json", config=STACKS_YAML)[0].stdout)
        hv1, hv2 = status["hosts"]
        assert hv2["stack"]["name"] == "bookworm-backports", hv2
        assert (hv2["qemu_version"], hv2["libvirt_version"]) == ("10.0.2", "11.3.0"), hv2
        assert hv1["qemu_version"].startswith("7.2") and hv1["libvirt_version"].startswith("9.0"), hv1
        version = run_lab("ssh", "hv2", "virsh", "version", config=STACKS_YAML)[0].stdout
        assert "Running hypervisor: QEMU 10.0.2" in version and "Using library: libvirt 11.3.0" in version, version
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", "-rsxXf",
                              "suites/cross_version", "--repeat", "1", "--thresholds", str(THRESHOLDS),
                              "--lab-config", str(STACKS_YAML), "--keep-lab"],
                             cwd=REPO, capture_output=True, text=True, timeout=3600)
        summary = (run.stdout.strip().splitlines() or ["no output"])[-1]
        record_property("cross_version_summary", summary)
        assert run.returncode == 0 and " passed" in summary, run.stdout[-5000:]
    finally:
        proc, took = run_lab("down", config=STACKS_YAML)
        record_property("lab_down_s", round(took, 1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [d for d in virsh("list", "--all", "--name").split() if d.startswith("kvmvst-")]
    assert not (Path("/var/lib/kvm-acceptance-lab") / "kvmvst").exists()

"""A harness-level fault: the pytest runner SIGKILLed in the middle of a fault scenario's migration
(the migration ports cut, TCP sysctls shrunk, two QEMUs up). `python -m lab down` must remove all of
it, and a new run must be able to start at once. The lab is this test's own (kvmkill, 198.19.61.0/24)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.runtime.layout import LabLayout
from tests.labtools import lab_cli, leftovers, nothing_left, write_lab_config

pytestmark = pytest.mark.lab
NAME = "kvmkill"
REPO = Path(__file__).resolve().parents[1]


def _mid_migration(layout: LabLayout) -> str | None:
    """A guest with a QEMU on both hosts (the migration's two ends) and a fault's nft table on hv2."""
    pidfiles = [{p.stem for p in (layout.host_dir(h) / "run-libvirt" / "qemu").glob("*.pid")} for h in ("hv1", "hv2")]
    both = pidfiles[0] & pidfiles[1]
    if not both:
        return None
    tables = subprocess.run(["ip", "netns", "exec", f"{NAME}-hv2", "nft", "list", "tables"],
                            capture_output=True, text=True).stdout
    return next(iter(both)) if "labfault" in tables else None


def test_runner_killed_mid_migration_then_down_removes_everything_and_a_new_run_starts(tmp_path):
    config = write_lab_config(tmp_path, NAME, 61)
    layout = LabLayout(NAME)
    # The nested run takes the machine-wide measurement lock for its fault test: this test holds none.
    argv = [sys.executable, "-m", "pytest", "suites/faults", "-k", "precopy-network-cut-held", "-p", "no:randomly",
            "-p", "no:xdist", "--lab-config", str(config), "--report-dir", str(tmp_path / "report"), "-q"]
    runner = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "LAB_RUN_ID": ""})
    guest = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and runner.poll() is None and guest is None:
            guest = _mid_migration(layout)
            time.sleep(0.1)
        assert guest, f"the nested run never reached the cut migration (exit status {runner.poll()})"
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        left = leftovers(NAME)
        assert left["processes"] and left["netns"], f"killing the runner should have left the lab as it was: {left}"
        started = time.monotonic()
        down = lab_cli(config, "down")
        down_s = time.monotonic() - started
        assert down.returncode == 0, down.stderr
        assert nothing_left(NAME), leftovers(NAME)
        up = lab_cli(config, "up")  # a new run can start at once
        assert up.returncode == 0, up.stderr
        assert "clearing" not in up.stderr, f"down left something the next up had to clear: {up.stderr}"
        tables = subprocess.run(["ip", "netns", "exec", f"{NAME}-hv2", "nft", "list", "tables"],
                                capture_output=True, text=True).stdout
        assert "labfault" not in tables, tables
        retries = subprocess.run(["ip", "netns", "exec", f"{NAME}-hv1", "sysctl", "-n", "net.ipv4.tcp_retries2"],
                                 capture_output=True, text=True).stdout.strip()
        assert retries == "15", f"a new host starts with the kernel's tcp_retries2, not the fault's: {retries}"
        assert down_s < 30, f"down took {down_s:.1f} s"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        lab_cli(config, "down")
    assert nothing_left(NAME), leftovers(NAME)

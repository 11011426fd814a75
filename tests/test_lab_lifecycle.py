"""up and down of whole labs: idempotent, complete, and safe after a crash.

Each test makes its own lab (own name, own /24 inside 198.19.0.0/16), so these
run in parallel with the session lab's tests.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab.runtime.state import LabState
from tests.labtools import lab_cli, leftovers, nothing_left, processes_mentioning, write_lab_config

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("shared_lab")]


def test_up_twice_is_harmless_and_down_leaves_nothing(tmp_path):
    config = write_lab_config(tmp_path, "kvmt1", 1)
    try:
        first = lab_cli(config, "up")
        assert first.returncode == 0, first.stderr
        pids = {h.name: dict(h.pids) for h in LabState.load("kvmt1").hosts}
        second = lab_cli(config, "up")
        assert second.returncode == 0 and "already up" in second.stderr
        assert {h.name: dict(h.pids) for h in LabState.load("kvmt1").hosts} == pids
        status = json.loads(lab_cli(config, "status", "--json").stdout)
        assert status["up"] and status["accelerator"] in ("kvm", "tcg") and status["accelerator_reason"]
        for host in status["hosts"]:
            assert host["libvirt_version"] and host["qemu_version"] and host["host_uuid"]
            assert host["libvirt_uri"].startswith(f"qemu+ssh://root@{host['address']}/system")
    finally:
        down = lab_cli(config, "down")
    assert down.returncode == 0, down.stderr
    assert nothing_left("kvmt1"), leftovers("kvmt1")
    again = lab_cli(config, "down")
    assert again.returncode == 0, again.stderr


def test_down_after_runner_killed_with_a_guest_running(tmp_path):
    """A runner SIGKILLed mid-run leaves daemons and a QEMU process; down removes them all."""
    config = write_lab_config(tmp_path, "kvmt2", 2)
    script = tmp_path / "runner.py"
    script.write_text(
        "import sys, time\n"
        "from lab.config.lab import load_lab_config\nfrom lab.backends import get_backend\n"
        "from lab.runtime.lab import Lab\nfrom lab.guest.domain import create_guest\n"
        f"cfg = load_lab_config({str(config)!r})\n"
        "get_backend(cfg).up(lambda m: None)\n"
        "lab = Lab.load(cfg)\n"
        "g = create_guest(lab, lab.hosts[0])\n"
        "print('GUEST', g.name, flush=True)\n"
        "time.sleep(600)\n")
    runner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        line = runner.stdout.readline()
        assert line.startswith("GUEST"), "runner did not get its guest up"
        guest_name = line.split()[1]
        assert processes_mentioning(f"guest={guest_name}"), "no QEMU process for the guest"
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    finally:
        if runner.poll() is None:
            runner.kill()
    assert leftovers("kvmt2")["processes"], "killing the runner should have left the lab running"
    down = lab_cli(config, "down")
    assert down.returncode == 0, down.stderr
    assert nothing_left("kvmt2"), leftovers("kvmt2")
    assert not processes_mentioning(f"guest={guest_name}")


def test_down_after_up_killed_half_way(tmp_path):
    config = write_lab_config(tmp_path, "kvmt3", 3)
    proc = subprocess.Popen([sys.executable, "-m", "lab", "--lab-config", str(config), "up"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        state = LabState.load("kvmt3")
        if state and state.hosts and state.hosts[0].pids:  # first host's daemons are running
            proc.send_signal(signal.SIGKILL)
            killed_at = [h.name for h in state.hosts]
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_at, "up finished before it could be killed half-way"
    assert not LabState.load("kvmt3").ready
    down = lab_cli(config, "down")
    assert down.returncode == 0, down.stderr
    assert nothing_left("kvmt3"), leftovers("kvmt3")


def test_failed_up_removes_what_it_made_and_says_why_in_one_line(tmp_path, monkeypatch):
    """A failure after the first host is fully up (injected: no real part fails on demand there)."""
    config = write_lab_config(tmp_path, "kvmt4", 4)
    monkeypatch.setenv("LAB_TEST_FAIL_AFTER_HOST", "hv1")
    up = lab_cli(config, "up")
    assert up.returncode == 2
    error_lines = [line for line in up.stderr.splitlines() if line.startswith("lab: error:")]
    assert error_lines == ["lab: error: hv1: injected failure (LAB_TEST_FAIL_AFTER_HOST)"], up.stderr
    assert "Traceback" not in up.stderr
    assert nothing_left("kvmt4"), leftovers("kvmt4")


def test_subnet_already_in_use_is_refused_before_anything_is_made(tmp_path):
    config = write_lab_config(tmp_path, "kvmt5", 5)
    subprocess.run(["ip", "link", "add", "kvmt5x", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "198.19.5.200/24", "dev", "kvmt5x"], check=True)
    subprocess.run(["ip", "link", "set", "kvmt5x", "up"], check=True)
    try:
        up = lab_cli(config, "up")
    finally:
        subprocess.run(["ip", "link", "del", "kvmt5x"], capture_output=True)
    assert up.returncode == 2
    assert "network.subnet: 198.19.5.0/24 is already routed via kvmt5x" in up.stderr
    assert nothing_left("kvmt5"), leftovers("kvmt5")


def test_a_state_file_this_version_cannot_read_blocks_neither_down_nor_up(tmp_path):
    """A lab left by another version (its state file has a key this one does not know) is cleared by its
    names: `status` says what is wrong in one line, `down` removes everything, `up` starts afresh."""
    config = write_lab_config(tmp_path, "kvmt6", 6)
    try:
        assert lab_cli(config, "up").returncode == 0
        state_file = LabState.load("kvmt6").layout.state_file
        doc = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**doc, "extra": {"image": {}}}))
        status = lab_cli(config, "status")
        assert status.returncode == 2 and "Traceback" not in status.stderr
        assert status.stderr.count("\n") == 1 and "unreadable lab state (extra:" in status.stderr
        down = lab_cli(config, "down")
        assert down.returncode == 0 and "clearing the lab by its names" in down.stderr, down.stderr
        assert nothing_left("kvmt6"), leftovers("kvmt6")
        up = lab_cli(config, "up")
        assert up.returncode == 0, up.stderr
    finally:
        lab_cli(config, "down")
    assert nothing_left("kvmt6"), leftovers("kvmt6")


def test_down_signals_no_recorded_pid_that_is_another_programs_now(tmp_path):
    """A daemon's recorded PID, its process long gone and the number reused by another program (PIDs wrap at
    32768 here, in minutes on a busy runner): `down` must leave that program alone. Made real by writing the PID
    of a process of this test's own, outside the lab, into the lab's state as a daemon's."""
    config = write_lab_config(tmp_path, "kvmt7", 10)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        up = lab_cli(config, "up")
        assert up.returncode == 0, up.stderr
        state = LabState.load("kvmt7")
        state.hosts[0].pids["virtlogd"] = bystander.pid  # as if virtlogd had died and its PID been reused
        state.save()
        down = lab_cli(config, "down")
        assert down.returncode == 0, down.stderr
        assert bystander.poll() is None, "down signalled a process that was never the lab's"
        assert nothing_left("kvmt7"), leftovers("kvmt7")
    finally:
        bystander.kill()  # our own child, by PID
        bystander.wait()
        lab_cli(config, "down")

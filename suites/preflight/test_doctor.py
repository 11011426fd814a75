"""`python -m lab doctor` on the lab's pair as a user runs it: without a guest, every check the hosts can
answer is answered (only the VM-state checks say they need a guest), within 10 s."""
import sys
import time

import pytest

from lab.preflight import CHECKS, NEEDS_A_GUEST
from lab.util.process import run

pytestmark = pytest.mark.lab
DOCTOR_BUDGET_S = 10


@pytest.mark.smoke
@pytest.mark.timing
def test_doctor_without_a_guest_answers_the_hosts_checks_in_under_10_s(lab, measurement_lock, record_property):
    """`python -m lab doctor` as a user runs it on this pair, timed from the command's start to its end."""
    src, dst = lab.hosts[0].name, lab.hosts[1].name
    argv = [sys.executable, "-m", "lab", "--lab-config", lab.config.source, "--lab", lab.config.backend,
            "doctor", "--src", src, "--dst", dst]
    started = time.monotonic()
    proc = run(argv, check=False, timeout=120)
    took = time.monotonic() - started
    record_property("doctor_seconds", round(took, 2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " SKIP " not in proc.stdout, proc.stdout
    need_guest = ", ".join(name for name, entry in CHECKS.items() if entry.needs_guest)
    assert f"not checked: {need_guest} ({NEEDS_A_GUEST})" in proc.stdout, proc.stdout
    assert took < DOCTOR_BUDGET_S, f"doctor took {took:.1f} s (budget {DOCTOR_BUDGET_S} s):\n{proc.stdout}"

"""`python -m lab doctor` on the lab's pair as a user runs it: without a guest, every check the hosts can
answer is answered (only the VM-state checks say they need a guest); its time is benchmarks/lab_bench.py's."""
import sys
import time

import pytest

from lab.preflight import CHECKS, NEEDS_A_GUEST
from lab.util.process import run

pytestmark = pytest.mark.lab


@pytest.mark.smoke
def test_doctor_without_a_guest_answers_every_hosts_check(lab, record_property):
    """`python -m lab doctor` as a user runs it on this pair. How long it takes is a benchmark figure
    (benchmarks/lab_bench.py, target 10 s), not a verdict: a loaded runner says nothing about the doctor."""
    src, dst = lab.hosts[0].name, lab.hosts[1].name
    argv = [sys.executable, "-m", "lab", "--lab-config", lab.config.source, "--lab", lab.config.backend,
            "doctor", "--src", src, "--dst", dst]
    started = time.monotonic()
    proc = run(argv, check=False, timeout=120)
    record_property("doctor_seconds", round(time.monotonic() - started, 2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " SKIP " not in proc.stdout, proc.stdout
    need_guest = ", ".join(name for name, entry in CHECKS.items() if entry.needs_guest)
    assert f"not checked: {need_guest} ({NEEDS_A_GUEST})" in proc.stdout, proc.stdout

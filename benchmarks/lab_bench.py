"""Lab benchmark: `lab up` and `lab down` seconds, guest boot to first heartbeat, `lab doctor` without a guest.

Runs on a lab of its own (kvmbench, 198.19.9.0/24), so it never disturbs the
default lab. Targets on a 2-core machine under TCG: up <= 10 s, down <= 5 s,
boot to first heartbeat <= 5 s, `python -m lab doctor` (the hosts' checks, as a user runs it) <= 10 s.

    .venv/bin/python benchmarks/lab_bench.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.backends import get_backend  # noqa: E402
from lab.config.lab import load_lab_config  # noqa: E402
from lab.guest.domain import create_guest, remove_guest  # noqa: E402
from lab.runtime.lab import Lab  # noqa: E402

CONFIG = """name: kvmbench
network: {subnet: 198.19.9.0/24, runner_address: 198.19.9.1, guest_range: 198.19.9.128/25}
hosts:
  - {name: hv1, address: 198.19.9.11}
  - {name: hv2, address: 198.19.9.12}
"""
TARGETS = {"lab up": 10.0, "lab down": 5.0, "boot to first heartbeat": 5.0, "lab doctor, no guest": 10.0}


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yaml"
        path.write_text(CONFIG)
        config = load_lab_config(path)
        backend = get_backend(config)
        quiet = lambda _msg: None  # noqa: E731
        backend.down(quiet)
        figures: dict[str, list[float]] = {name: [] for name in TARGETS}
        accel = ""
        try:
            for _ in range(args.rounds):
                figures["lab up"].append(timed(lambda: backend.up(quiet)))
                lab = Lab.load(config)
                accel = f"accelerator {lab.accelerator}: {lab.state.accelerator_reason}"
                doctor = [sys.executable, "-m", "lab", "--lab-config", str(path), "doctor", "--src", "hv1", "--dst", "hv2"]
                figures["lab doctor, no guest"].append(timed(lambda: subprocess.run(doctor, capture_output=True,
                                                                                    check=True, timeout=120)))
                for _ in range(2):
                    guest = create_guest(lab, lab.hosts[0], wait=False)
                    try:
                        figures["boot to first heartbeat"].append(guest.wait_ready())
                    finally:
                        remove_guest(lab, guest)
                figures["lab down"].append(timed(lambda: backend.down(quiet)))
        finally:
            backend.down(quiet)
        print(f"lab benchmark ({args.rounds} rounds, {accel}):")
        for name, values in figures.items():
            verdict = "ok" if statistics.median(values) <= TARGETS[name] else "OVER TARGET"
            print(f"  {name:<24} median {statistics.median(values):6.2f} s  min {min(values):6.2f}  "
                  f"max {max(values):6.2f}  target <= {TARGETS[name]:.0f} s  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

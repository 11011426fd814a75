"""Live migration benchmark: the suite's wall time, harness overhead per migration, probe agreement.

Runs `pytest suites/live_migration -n auto` on the default lab and reads its records:

- wall time of the whole live suite;
- harness overhead per migration: wall time the harness spends beyond the
  migration API call (probe start, settle, analysis), as a share of that call
  (target <= 15%);
- libvirt's own cost beyond the job: API call wall time minus the completed
  job's time_elapsed (destination QEMU start, p2p connection, finish phase);
- the median gap between guest-perceived and libvirt-reported downtime on an
  idle guest (precopy-idle, ping-pong; target <= 30 ms).

    .venv/bin/python benchmarks/live_bench.py [--repeat 3] [-- extra pytest args]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDLE_SCENARIOS = ("precopy-idle", "ping-pong")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    report = Path(tempfile.mkdtemp(prefix="live-bench-"))
    argv = [sys.executable, "-m", "pytest", "suites/live_migration", "-n", "auto", "-q", "--repeat", str(args.repeat),
            "--report-dir", str(report), *args.pytest_args]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    outcome = (proc.stdout.strip().splitlines() or ["?"])[-1]
    records = [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines() if line.strip()]
    measured = [r for r in records if r.get("kind") == "live-migration" and "harness_s" in r and r.get("ok")
                and "time_elapsed" in r.get("libvirt_stats", {})]
    overhead = [r["harness_s"] / r["wall_s"] * 100 for r in measured]
    libvirt_extra = [r["wall_s"] - r["libvirt_stats"]["time_elapsed"] / 1000 for r in measured]
    idle_gap = [r["downtime_ms"]["guest"] - r["downtime_ms"]["hypervisor"] for r in measured
                if r["scenario"] in IDLE_SCENARIOS]
    print(f"live migration benchmark (repeat {args.repeat}, records in {report}):")
    print(f"  suite wall time                         {wall:7.1f} s   ({outcome})")
    print(f"  measured migrations                     {len(measured):7d}")
    if overhead:
        print(f"  harness overhead per migration, median  {statistics.median(overhead):7.1f} %   "
              f"max {max(overhead):.1f} %   target <= 15 %")
        print(f"  libvirt beyond job time, median         {statistics.median(libvirt_extra):7.2f} s")
    if idle_gap:
        print(f"  guest - hypervisor downtime, idle, med  {statistics.median(idle_gap):7.1f} ms  "
              f"(n={len(idle_gap)}, min {min(idle_gap):.1f}, max {max(idle_gap):.1f})   target <= 30 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

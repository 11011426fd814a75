"""Hot patch benchmark: QEMU and kpatch build times, apply stall and frozen time.

Runs the hot patch suite's apply test (`--repeat N` applies of kpatch 0001 on one
guest) on the default lab and reads its records; build times come from the
cache entries (a cached build reports the minutes it took when it was made).
Needs libcareplus (PATH or hotpatch.libcareplus_prefix) and root.

    .venv/bin/python benchmarks/hotpatch_bench.py [--repeat 5] [-- extra pytest args]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the harness is imported from this checkout

from lab.config.lab import load_lab_config  # noqa: E402 - needs the path above
from lab.hotpatch.libcareplus import missing_reason  # noqa: E402
from lab.util.process import run  # noqa: E402

SUITE_TIMEOUT_S = None  # the suite's builds take as long as they take; pytest's own timeouts apply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    config = load_lab_config()
    reason = missing_reason(config.hotpatch.libcareplus_prefix)
    if reason:
        print(f"hotpatch benchmark: {reason}")
        return 2
    report = Path(tempfile.mkdtemp(prefix="hotpatch-bench-"))
    argv = [sys.executable, "-m", "pytest", "suites/hotpatch", "-q", "-p", "no:randomly", "--keep-lab",
            "-k", "kpatch_is_named or apply_changes_behaviour", "--repeat", str(args.repeat),
            "--report-dir", str(report), *args.pytest_args]
    start = time.monotonic()
    proc = run(argv, check=False, timeout=SUITE_TIMEOUT_S, cwd=ROOT)
    wall = time.monotonic() - start
    outcome = (proc.stdout.strip().splitlines() or ["?"])[-1]
    path = report / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    applies = [r for r in records if r.get("kind") == "hotpatch-apply"]
    builds = [r for r in records if r.get("kind") == "hotpatch-build"]
    print(f"hot patch benchmark (repeat {args.repeat}, records in {report}): {outcome}; wall {wall:.0f} s")
    for b in builds:
        print(f"  QEMU build through libcare-patch-make's original stage: {b['qemu_build_minutes']:.1f} min; "
              f"kpatch {b['patch_id']}: {b['kpatch_build_seconds'] / 60:.1f} min (when it was built; later runs reuse it)")
    if applies:
        stall = [r["stall_ms"] for r in applies]
        frozen = [r["frozen_time_us"] / 1000 for r in applies]
        unstall = [r["unapply_stall_ms"] for r in applies]
        base = [r["baseline_max_gap_ms"] for r in applies]
        line = lambda xs: f"median {statistics.median(xs):.1f} ms, max {max(xs):.1f} ms"  # noqa: E731
        print(f"  apply frozen_time (libcare-ctl): {line(frozen)}")
        print(f"  apply stall (largest guest heartbeat gap): {line(stall)}")
        print(f"  baseline heartbeat gap (same length, before): {line(base)}")
        print(f"  unapply stall: {line(unstall)}")
    if proc.returncode != 0:
        print(proc.stdout[-3000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

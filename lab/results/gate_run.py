"""The release gate in one command: the same pytest selection on a baseline and a candidate stack, compared.

    python -m lab gate --baseline system --candidate bookworm-backports [--lab-config labs/gate.yaml]
                       [--out reports/gate-ID] [-- PYTEST_ARGS...]

For each side, the lab file is rewritten with every host on that side's stack (into OUT/<side>/lab.yaml,
so the run says what it ran on), the lab is brought up, pytest runs the selection with its report in
OUT/<side>/, and the lab goes down again (a side's failure still brings it down). Then `compare` judges
the candidate against the baseline (gate.py) and its exit status is the gate's: 1 on a regression, 3
when too few samples were taken to judge, 0 otherwise, 2 when a side could not run at all.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from lab.config.lab import LabConfig, parse_lab_config
from lab.config.stacks import SYSTEM
from lab.config.validation import load_file
from lab.errors import ConfigError
from lab.util.files import atomic_write_json
from lab.util.process import attached

SIDES = ("baseline", "candidate")
# What the gate runs unless told otherwise: the scenarios that tell stacks apart (the dirty ones
# lose pages on QEMU < 9.0 under TCG), with enough repetitions for the shift test (gate.MIN_SAMPLES).
DEFAULT_SELECTION = ["suites/live_migration", "-k", "precopy-idle or dirty", "--repeat", "6"]


def side_config(lab_file: Path, stack: str) -> dict[str, Any]:
    """The lab file's document with every host on `stack`; relative patch paths made absolute."""
    config: LabConfig = load_file(lab_file, "lab config", "pass --lab-config PATH",
                                  lambda data: parse_lab_config(data, str(lab_file)))
    if stack != SYSTEM and stack not in config.stacks:
        known = ", ".join([SYSTEM, *config.stacks])
        raise ConfigError(f"{lab_file}: unknown stack {stack!r} (stacks there: {known}); define it under stacks:")
    raw = copy.deepcopy(yaml.safe_load(lab_file.read_text()) or {})
    raw["hosts"] = [{**host, "stack": stack} for host in raw.get("hosts")
                    or [{"name": h.name, "address": h.address} for h in config.hosts]]
    for name, spec in (raw.get("stacks") or {}).items():
        if spec.get("patches"):
            spec["patches"] = list(config.stacks[name].patches)  # resolved against the lab file
    parse_lab_config(raw, str(lab_file))  # the rewritten document must stand on its own
    return raw


def run_side(side: str, stack: str, lab_file: Path, out: Path, pytest_args: list[str],
             say: Callable[[str], None]) -> int:
    """One side: lab up on `stack`, the selection, lab down. pytest's exit status (up's when up failed)."""
    folder = out / side
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "lab.yaml"
    config_file.write_text(yaml.safe_dump(side_config(lab_file, stack), sort_keys=False))
    say(f"gate: {side} on stack {stack}")
    return run_selection(config_file, folder, pytest_args, f"{out.name}-{side}", say)


ROOT = Path(__file__).resolve().parents[2]  # the checkout whose suites the selection names


def run_selection(config_file: Path, folder: Path, pytest_args: list[str], run_id: str,
                  say: Callable[[str], None]) -> int:
    """Lab up from `config_file`, the pytest selection with its report in `folder`, lab down (also when the
    selection failed). pytest's exit status, or up's when up failed."""
    lab = [sys.executable, "-m", "lab", "--lab-config", str(config_file)]
    env = {**os.environ, "LAB_RUN_ID": run_id}
    say(f"lab up ({config_file})")
    try:
        status = attached([*lab, "up"], env=env)
        if status != 0:
            return status
        say(f"pytest {' '.join(pytest_args)}")
        # One token per option and the rootdir named: pytest picks its rootdir from the paths among its arguments
        # before the plugin's options are known, and a report folder outside the tree (or in another checkout)
        # then became the rootdir, and the suites were collected from the wrong tree.
        return attached([sys.executable, "-m", "pytest", f"--rootdir={ROOT}", f"--lab-config={config_file}",
                         f"--report-dir={folder}", *pytest_args], env=env)
    finally:
        say("lab down")
        attached([*lab, "down"], env=env)


def run_gate(baseline: str, candidate: str, lab_file: Path, out: Path, pytest_args: list[str],
             say: Callable[[str], None]) -> int:
    for stack in (baseline, candidate):  # both checked before anything runs
        side_config(lab_file, stack)
    args = pytest_args or DEFAULT_SELECTION
    statuses = {}
    for side, stack in zip(SIDES, (baseline, candidate)):
        statuses[side] = run_side(side, stack, lab_file, out, args, say)
        # pytest's 1 is "some tests failed": the comparison judges that. Anything else ran nothing to compare.
        if statuses[side] not in (0, 1):
            say(f"gate: {side} on stack {stack} did not run (exit status {statuses[side]}); nothing to compare")
            return 2
        if side == "baseline":  # a candidate slower in every move would otherwise calibrate its own, looser limits
            pin_calibration(out / side, out, say)
    say(f"gate: comparing {out / 'candidate'} against {out / 'baseline'}")
    return attached([sys.executable, "-m", "lab", "compare", str(out / "baseline"), str(out / "candidate"),
                     "--out", str(out)])


def pin_calibration(reference_run: Path, out: Path, say: Callable[[str], None]) -> Path | None:
    """Judge the runs that follow by the limits of `reference_run`'s calibration ($LAB_CALIBRATION, which
    lab.migration.calibrate reads): the gate's baseline, the mutant runner's clean build, bisect's good side. A candidate that slows every migration would otherwise calibrate
    itself slow and set its own limits. None when that run judged no limit (no calibration in its records)."""
    records = reference_run / "results.jsonl"
    for line in records.read_text().splitlines() if records.exists() else ():
        cal = json.loads(line).get("calibration")
        if cal:
            pinned = (out / "calibration.json").resolve()
            atomic_write_json(pinned, cal)
            os.environ["LAB_CALIBRATION"] = str(pinned)
            say(f"every candidate judged by the limits of {reference_run.name}'s calibration ({pinned})")
            return pinned
    return None

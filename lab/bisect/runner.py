"""`python -m lab bisect`: each step's QEMU built as a stack, the selection run on the lab, judged like the gate.

Two forms of candidates:
- a git tree: `--tree PATH --good REV --bad REV`, the commits on the ancestry path from good to bad, each
  built as a `source: git` stack (lab/stacks/git_build.py);
- a patch series: `--series PATCH...` on a lab file's build stack (`--stack NAME`): the candidates are that
  stack with the first 0, 1, ... N patches of the series applied (distro QA: the previous package plus
  backports).
Every host of the lab runs the step's stack, or only `--host NAME` (a rolling-upgrade regression). The good
side's run is the reference; a step is bad when the gate finds a regression against it (a worse verdict, a
new finding kind, more pages lost; a probe shift with enough samples), good when it finds none and no data is
missing, undecided otherwise (search.py says what follows). The log, every step's runs and the outcome go in
OUT/ (bisect.md, bisect.json), each run a report folder with its HTML report.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import yaml

from lab.bisect.search import BAD, GOOD, UNDECIDED, Outcome, Run, bisect
from lab.config.lab import load_lab_config
from lab.config.validation import load_file
from lab.errors import ConfigError
from lab.results.gate import compare, load
from lab.results.gate_run import pin_calibration, run_selection
from lab.stacks.git_build import git, resolve_commit
from lab.stacks.resolve import ensure_stack
from lab.util.files import atomic_write_json, atomic_write_text

STACK = "bisect"


def judge_run(reference: Path, run_dir: Path) -> Run:
    """The real verdict reader: the gate's comparison of one run with the good side's."""
    if not (run_dir / "junit.xml").exists() or not (run_dir / "results.jsonl").exists():
        return Run(UNDECIDED, f"no results in {run_dir} (the build, the lab or the run failed)", folder=str(run_dir))
    result = compare(load(reference), load(run_dir))
    if result["regressions"]:
        return Run(BAD, "; ".join(result["regressions"]), folder=str(run_dir))
    if result["missing"]:
        return Run(UNDECIDED, "missing: " + "; ".join(result["missing"]), folder=str(run_dir))
    return Run(GOOD, f"no regression against the good side ({len(result['tests'])} test(s))", folder=str(run_dir))


def git_candidates(tree: Path, good: str, bad: str) -> tuple[list[str], list[str]]:
    """(commit ids, labels): good first, then every commit on the ancestry path to bad, bad last."""
    good_sha, _ = resolve_commit(tree, good)
    bad_sha, _ = resolve_commit(tree, bad)
    path = git(tree, "rev-list", "--reverse", "--ancestry-path", f"{good_sha}..{bad_sha}").split()
    if not path or path[-1] != bad_sha:
        raise ConfigError(f"--bad {bad} does not descend from --good {good} in {tree}: nothing to bisect")
    shas = [good_sha, *path]
    return shas, [f"{s[:12]} {git(tree, 'log', '-1', '--format=%s', s)}" for s in shas]


def lab_doc(lab_file: Path, stack: dict, host: str | None) -> dict:
    raw = copy.deepcopy(load_file(lab_file, "lab config", "pass --lab-config PATH", lambda data: data) or {})
    raw.setdefault("stacks", {})
    for spec in raw["stacks"].values():  # relative patch paths stay relative to the original lab file
        if spec.get("patches"):
            spec["patches"] = [str((lab_file.parent / p).resolve()) for p in spec["patches"]]
    raw["stacks"][STACK] = stack
    names = [h["name"] for h in raw.get("hosts", [])]
    if host is not None and host not in names:
        raise ConfigError(f"--host {host}: no such host in {lab_file} (hosts: {', '.join(names)})")
    raw["hosts"] = [{**h, "stack": STACK} if host in (None, h["name"]) else h for h in raw["hosts"]]
    return raw


def series_stacks(lab_file: Path, base: str, series: list[Path]) -> tuple[list[dict], list[str]]:
    raw = load_file(lab_file, "lab config", "pass --lab-config PATH", lambda data: data) or {}
    spec = (raw.get("stacks") or {}).get(base)
    if not spec or spec.get("source") != "build":
        raise ConfigError(f"--stack {base}: not a `source: build` stack of {lab_file} (a series is applied to one)")
    own = [str((lab_file.parent / p).resolve()) for p in spec.get("patches", [])]
    stacks = [{**spec, "patches": own + [str(p.resolve()) for p in series[:k]]} for k in range(len(series) + 1)]
    return stacks, [f"{k} of {len(series)} patches" + (f" (up to {series[k - 1].name})" if k else "")
                    for k in range(len(series) + 1)]


def run_bisect(stacks: list[dict], labels: list[str], lab_file: Path, host: str | None, selection: list[str],
               out: Path, say: Callable[[str], None], confirm: int = 2, run_step=None) -> Outcome:
    """run_step(stack, lab_file, host, selection, folder, say) -> (build s, test s) builds and runs one candidate
    into a report folder (default: a real build and lab run; tests pass a stub build step)."""
    run_step = run_step or _run_step
    if not selection:
        raise ConfigError("bisect: give the pytest selection after --, e.g. -- suites/live_migration -k dirty")
    out.mkdir(parents=True, exist_ok=True)
    say(f"bisect: {len(labels)} candidates from {labels[0]} (good) to {labels[-1]} (bad); runs in {out}")
    reference = out / "good"
    timings = run_step(stacks[0], lab_file, host, selection, reference, say)
    pin_calibration(reference, out, say)

    def run(index: int, attempt: int) -> Run:
        folder = out / f"step-{index:03d}-run{attempt + 1}"
        build_s, test_s = run_step(stacks[index], lab_file, host, selection, folder, say)
        verdict = judge_run(reference, folder)
        verdict.build_s, verdict.test_s = build_s, test_s
        return verdict

    outcome = bisect(labels, run, say, confirm=confirm)
    outcome.wall_s += sum(timings)
    write_log(out, outcome, selection)
    return outcome


def _run_step(stack: dict, lab_file: Path, host: str | None, selection: list[str], folder: Path,
              say: Callable[[str], None]) -> tuple[float, float]:
    """Build (through `lab up`'s stack fetch) and run one candidate; (build s, test s)."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "lab.yaml"
    config_file.write_text(yaml.safe_dump(lab_doc(lab_file, stack, host), sort_keys=False))
    started = time.monotonic()
    ensure_stack(STACK, load_lab_config(config_file).stacks[STACK], say)  # the rewritten file stands on its own
    built = time.monotonic()
    run_selection(config_file, folder, selection, f"bisect-{folder.name}", say)
    return built - started, time.monotonic() - built


def write_log(out: Path, outcome: Outcome, selection: list[str]) -> None:
    atomic_write_json(out / "bisect.json", {"selection": selection, **asdict(outcome), "builds": outcome.builds})
    atomic_write_text(out / "bisect.md", text(outcome, selection))


def text(outcome: Outcome, selection: list[str]) -> str:
    c = outcome.candidates
    lines = [f"# Bisect: {outcome.state}", "", outcome.why, "",
             f"{len(c)} candidates, {outcome.builds} build(s) and run(s) (log2 of the range: "
             f"{max(1, len(c) - 1).bit_length()}), {outcome.wall_s / 60:.1f} min; selection `{' '.join(selection)}`", ""]
    if outcome.state == "found":
        for label, i in (("first bad", outcome.first_bad), ("last good", outcome.last_good)):
            runs = next((s.runs for s in reversed(outcome.steps) if s.index == i), [])
            evidence = runs[0].evidence if runs else "the good side (the reference)"
            lines.append(f"- **{label}**: {c[i]}: {evidence}")
        lines.append("")
    lines += ["| step | candidate | verdict | runs (build s / test s) | evidence |", "|---|---|---|---|---|"]
    for n, s in enumerate(outcome.steps, 1):
        runs = ", ".join(f"{r.verdict} ({r.build_s:.0f}/{r.test_s:.0f})" for r in s.runs)
        lines.append(f"| {n} | {s.label} | {s.verdict} | {runs} | {s.runs[-1].evidence if s.runs else ''} |")
    return "\n".join(lines) + "\n"


def read_outcome(out: Path) -> dict:
    return json.loads((out / "bisect.json").read_text())

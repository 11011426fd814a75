"""`python -m lab mutants run [--only ID ...] -- PYTEST-SELECTION`: each mutant built as a stack and run.

The clean build first: the harness's pinned stack (labs/fixed-qemu.yaml: Debian's QEMU 7.2 with the TCG
dirty-bitmap fix, whose random memory loss would otherwise be counted as "caught"), then each mutant as that
stack plus its patch, every host of the lab on it (gate_run.run_side: lab up, the selection, lab down). The
builds go through the compiler cache: a mutant recompiles the files its patch touches. A mutant is judged
against the clean run the way the release gate judges a candidate (gate.compare):
- caught: a test failed that passed on the clean build, or failed with a finding kind the clean run's did not
  (named, with the test), or more pages were lost per move;
- excused: no such test, but a test was excused by a registered known defect (named: an excuse that hides a
  mutant is a finding of its own);
- missed: every test of the selection ran and nothing got worse;
- undecided: the build failed, the lab did not come up, or a test the clean run judged was not run; or a catch
  resting on verdicts alone (a limit, say) did not repeat when its tests ran again (confirm_catch).
A negative control (no behaviour changed) that is caught is a false alarm; so is a clean run that fails.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from lab.config.validation import load_file
from lab.errors import ConfigError, LabError
from lab.mutants.corpus import Mutant
from lab.results.gate import compare, load
from lab.results.gate_run import pin_calibration, run_side
from lab.results.report.junit import EXCUSED, read_junit
from lab.results.verdicts import Kind
from lab.util.files import atomic_write_json, atomic_write_text

BASE_LAB = Path(__file__).resolve().parents[2] / "labs" / "fixed-qemu.yaml"
CLEAN = "clean"
THRESHOLD = Kind.THRESHOLD.value


@dataclass
class Outcome:
    id: str
    kind: str
    expect: str
    state: str  # caught | missed | excused | undecided | false-alarm | clean
    why: str
    by: list[str] = field(default_factory=list)  # test (new finding kinds) that caught it
    wall_s: float = 0.0
    # The tests of a catch that rests on their verdicts alone (no new finding kind in the moves' records but a
    # limit's, no pages lost): run again before the catch counts (confirm_catch).
    shaky: list[str] = field(default_factory=list)


def lab_document(base: Path, name: str, extra_patch: Path | None) -> dict:
    """The base lab file's document with its one stack renamed `name`, plus `extra_patch`, on every host."""
    raw = copy.deepcopy(load_file(base, "lab config", "pass --lab-config PATH", lambda data: data) or {})
    (stack_name, spec), = raw["stacks"].items()
    spec = dict(spec)
    spec["patches"] = [str((base.parent / p).resolve()) for p in spec.get("patches", [])]
    if extra_patch is not None:
        spec["patches"].append(str(extra_patch.resolve()))
    raw["stacks"] = {name: spec}
    raw["hosts"] = [{**h, "stack": name} for h in raw["hosts"]]
    return raw


def _run_one(name: str, patch: Path | None, base: Path, out: Path, selection: list[str],
             say: Callable[[str], None], stack_of: str = "") -> tuple[int, float]:
    """`stack_of`: the run whose stack this one reuses (a second run of the same mutant), else `name`'s own."""
    folder = out / name
    if folder.exists():  # a run appends to its folder's records: an earlier attempt's would count twice
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    lab_file = folder / "mutant-lab.yaml"
    stack = f"mut-{stack_of or name}"[:32].rstrip("-")  # a stack name: at most 32 characters
    started = time.monotonic()
    try:
        lab_file.write_text(yaml.safe_dump(lab_document(base, stack, patch), sort_keys=False))
        status = run_side(name, stack, lab_file, out, selection, say)
    except LabError as exc:  # this mutant's lab could not be made: undecided, the next one runs
        say(f"mutants: {name}: {exc}")
        (folder / "error.txt").write_text(f"{exc}\n")
        status = 2
    return status, time.monotonic() - started


def judge_mutant(mutant: Mutant, clean_dir: Path, run_dir: Path, status: int, wall_s: float) -> Outcome:
    base = Outcome(mutant.id, mutant.kind, mutant.expect, "undecided", "", wall_s=round(wall_s, 1))
    if not (run_dir / "junit.xml").exists() or not (run_dir / "results.jsonl").exists():
        base.why = (f"no run to judge (exit status {status}: the build or `lab up` failed, or the run ended before "
                    f"pytest wrote its results; see {run_dir})")
        return base
    result = compare(load(clean_dir), load(run_dir))
    worse = [t for t in result["tests"] if t["regression"] and t["cand"] != EXCUSED]  # ends in fail
    memory = [m for m in result["memory"] if m["regression"]]
    was = {o.nodeid: o.state for o in read_junit(clean_dir / "junit.xml")}
    # Excused here but not on the clean build: the excuse hides what the mutant did (excused on both is no news).
    excused = [o for o in read_junit(run_dir / "junit.xml") if o.state == EXCUSED and was.get(o.nodeid) != EXCUSED]
    if worse or (memory and not excused):
        base.by = [f"{t['test']} ({t['base']} -> {t['cand']}" + (f"; new {', '.join(t['new_findings'])}"
                   if t["new_findings"] else "") + ")" for t in worse] + \
                  [f"{m['scenario']}: more pages lost per move" for m in memory]
        base.state = "false-alarm" if mutant.negative else "caught"
        base.why = f"{len(worse)} test(s) worse, {len(memory)} scenario(s) with more pages lost"
        if not memory and all(set(t["new_findings"]) <= {THRESHOLD} for t in worse):
            base.shaky = [t["test"] for t in worse]
        return base
    if excused:  # what the mutant did was excused as a known defect: the excuse hides it, a finding of its own
        base.state = "excused"
        base.why = "; ".join(f"{o.nodeid} excused by {', '.join(o.prop('excused_by')) or '?'}" for o in excused)
        return base
    if result["missing"]:
        base.why = "data the clean run has is missing: " + "; ".join(result["missing"][:3])
        return base
    base.state = "missed"
    base.why = f"{len(result['tests'])} test(s) ran, none worse than on the clean build"
    return base


def confirm_catch(mutant: Mutant, first: Outcome, clean_dir: Path, base: Path, out: Path, selection: list[str],
                  say: Callable[[str], None]) -> Outcome:
    """A catch resting on a verdict alone in one run may be the runner's own noise at a limit (seen: the tunnelled move's
    hypervisor downtime 152 ms against 150 on a mutant that changes only a cancel). Those tests run again on the
    mutant: a catch that repeats stands; one that does not is undecided, since the run stopped at it (--maxfail)
    and what the rest of the selection would have shown is unknown (`--resume --again ID` runs it anew)."""
    name = f"{mutant.id}.again"
    say(f"mutants: {mutant.id}: caught by verdicts alone ({', '.join(first.shaky)}): run again to confirm")
    status, wall = _run_one(name, mutant.path, base, out, [*first.shaky, *options_of(selection)], say,
                            stack_of=mutant.id)
    again = judge_mutant(mutant, clean_dir, out / name, status, wall)
    first.wall_s = round(first.wall_s + wall, 1)
    if again.state == first.state:
        first.why += f"; confirmed by a second run of those tests ({again.why})"
        first.by = again.by
    else:
        first.why = (f"caught by verdicts alone once ({'; '.join(first.by)}), not in a second run of those tests "
                     f"({again.state}: {again.why}): noise at a limit; the rest of the selection did not run after it")
        first.state, first.by = "undecided", []
    return first


def options_of(selection: list[str]) -> list[str]:
    """The selection's options with their values (e.g. -m "not slow" --repeat 1), without its paths."""
    kept, i = [], 0
    while i < len(selection):
        token = selection[i]
        if token.startswith("-"):
            kept.append(token)
            following = selection[i + 1] if i + 1 < len(selection) else None
            if "=" not in token and following is not None and not following.startswith("-") \
                    and not Path(following.split("::")[0]).exists():
                kept.append(following)
                i += 1
        i += 1
    return kept


def _earlier(out: Path, selection: list[str]) -> dict[str, Outcome]:
    """The decided outcomes of an earlier run into `out` with the same selection (what --resume keeps)."""
    try:
        earlier = read_result(out)
    except (OSError, ValueError):
        return {}
    if earlier.get("selection") != selection:
        raise ConfigError(f"mutants run --resume: {out} was run with the selection {' '.join(earlier.get('selection', []))!r}, "
                          "not this one; give another --out or the same selection")
    return {o["id"]: Outcome(**o) for o in earlier["outcomes"] if o["state"] != "undecided"}


def run_mutants(mutants: list[Mutant], selection: list[str], out: Path, say: Callable[[str], None],
                base: Path = BASE_LAB, clean: Path | None = None, resume: bool = False,
                again: tuple[str, ...] = ()) -> dict:
    """`clean`: an earlier run of the clean build with the same selection, to judge against instead of a new one.
    `resume`: keep the decided outcomes an earlier, cut-off run left in `out`; run the others. `again` (with
    `resume`): these are run anew although decided, e.g. after a harness fix; their earlier outcome is replaced
    ("clean": the clean build too, which the mutants run from then on are judged against)."""
    if not selection:
        raise ConfigError("mutants run: give the pytest selection after --, e.g. -- suites/live_migration -k dirty")
    unknown = sorted(set(again) - {m.id for m in mutants} - {CLEAN})
    if unknown or (again and not resume):
        raise ConfigError(f"mutants run --again {' '.join(again)}: " + (f"no such mutant among those run "
                          f"({', '.join(unknown)})" if unknown else "goes with --resume (it re-runs decided ones)"))
    kept = {k: o for k, o in (_earlier(out, selection) if resume else {}).items() if k not in again}
    if kept:
        say(f"mutants: --resume keeps {len(kept)} decided outcome(s) from {out / 'mutants.json'}")
    if CLEAN in kept and clean is None:
        clean = out / CLEAN
    if clean is None:
        say(f"mutants: the clean build first ({base}), then {len(mutants)} mutant(s); runs in {out}")
        status, wall = _run_one(CLEAN, None, base, out, selection, say)
        clean_dir = out / CLEAN
    else:
        say(f"mutants: judged against the clean run {clean}; {len(mutants)} mutant(s); runs in {out}")
        status, wall, clean_dir = 0, 0.0, clean
    if not (clean_dir / "junit.xml").exists():
        raise LabError(f"mutants: the clean build's run produced no results (exit status {status}); see {clean_dir}")
    pin_calibration(clean_dir, out, say)
    clean_failed = [o.nodeid for o in read_junit(clean_dir / "junit.xml") if o.state == "fail"]
    outcomes = [kept.get(CLEAN) or Outcome(CLEAN, "clean", "none", "false-alarm" if clean_failed else "clean",
                        f"failed on the clean build: {', '.join(clean_failed)}" if clean_failed else "all passed",
                        wall_s=round(wall, 1))]
    for i, mutant in enumerate(mutants, 1):
        if mutant.id in kept:
            outcomes.append(kept[mutant.id])
            continue
        say(f"mutants: {i} of {len(mutants)}: {mutant.id} ({mutant.kind}): {mutant.breaks}")
        status, wall = _run_one(mutant.id, mutant.path, base, out, selection, say)
        outcome = judge_mutant(mutant, clean_dir, out / mutant.id, status, wall)
        if outcome.shaky:
            outcome = confirm_catch(mutant, outcome, clean_dir, base, out, selection, say)
        say(f"mutants: {mutant.id}: {outcome.state.upper()} ({outcome.why}) in {wall:.0f} s")
        outcomes.append(outcome)
        _write(out, outcomes, selection)  # after each: a cut-off run keeps what it has (--resume goes on from it)
    return _write(out, outcomes, selection)


def summary(outcomes: list[Outcome]) -> dict:
    real = [o for o in outcomes if o.kind not in ("clean", "negative-control")]
    decided = [o for o in real if o.state != "undecided"]
    caught = [o for o in real if o.state == "caught"]
    alarms = [o for o in outcomes if o.state == "false-alarm"]
    return {"mutants": len(real), "caught": len(caught), "decided": len(decided),
            "excused": sum(o.state == "excused" for o in real), "missed": sum(o.state == "missed" for o in real),
            "undecided": len(real) - len(decided), "false_alarms": len(alarms),
            "detection_rate": round(len(caught) / len(real), 3) if real else None}


def table(result: dict) -> str:
    s = result["summary"]
    rate = "-" if s["detection_rate"] is None else f"{s['detection_rate']:.0%}"
    lines = [f"# Mutants: {s['caught']} of {s['mutants']} caught (detection rate {rate}); "
             f"{s['missed']} missed, {s['excused']} excused, {s['undecided']} undecided; "
             f"{s['false_alarms']} false alarm(s); wall time {result['wall_s'] / 60:.1f} min", "",
             f"Selection: `{' '.join(result['selection'])}`", "",
             "| mutant | class | expected | outcome | caught by / why | wall s |", "|---|---|---|---|---|---|"]
    for o in result["outcomes"]:
        detail = "; ".join(o["by"]) if o["by"] else o["why"]
        lines.append(f"| {o['id']} | {o['kind']} | {o['expect']} | **{o['state']}** | {detail} | {o['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, outcomes: list[Outcome], selection: list[str]) -> dict:
    # The wall time is the runs' own (build, lab, selection), summed: a resumed run counts its earlier part too.
    result = {"selection": selection, "wall_s": round(sum(o.wall_s for o in outcomes), 1), "outcomes": [asdict(o) for o in outcomes],
              "summary": summary(outcomes)}
    atomic_write_json(out / "mutants.json", result)
    atomic_write_text(out / "mutants.md", table(result))
    return result


def read_result(out: Path) -> dict:
    return json.loads((out / "mutants.json").read_text())

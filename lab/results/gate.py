"""The release gate: a baseline run and a candidate run compared, test by test and probe by probe.

A candidate regresses when it is worse in any way the runs can show:
- a test's verdict gets worse (pass > excused > fail);
- its evidence gets worse under the same verdict: a finding kind the baseline's run of that test did not have;
- the dirty-page oracle finds more pages lost per move in a scenario;
- a probe's distribution shifts the wrong way beyond the stated limit with significance: the downtime of each
  probe and the total migration time up, the throughput down (one-sided Mann-Whitney U, scipy, at ALPHA; the
  median shift beyond max(MIN_SHIFT, MIN_SHIFT_PCT of the baseline median); the effect size beside it).
A candidate that lacks data the baseline has (a test skipped or not run, a scenario or probe without samples,
moves without an oracle reading) is never a pass: the gate is undecided (exit 3) and names what is missing, as
it is when either side has fewer than MIN_SAMPLES migrations of a scenario.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.errors import ReportError
from lab.results.records import read_records
from lab.results.report.junit import EXCUSED, FAIL, PASS, read_junit
from lab.util.files import atomic_write_json, atomic_write_text

ALPHA = 0.05
MIN_SHIFT_PCT = 20.0
# Below this many migrations a side, a shift is not judged: two runs of the same stack were seen to
# differ "significantly" at n=3 (precopy-idle, p=0.038, machine load). The gate then says so and
# exits 3 (undecided), never 0: run both sides with --repeat 6 or more.
MIN_SAMPLES = 6
RANK = {PASS: 2, EXCUSED: 1, FAIL: 0}  # skipped tests ran nothing: missing data, never compared as a verdict


@dataclass(frozen=True)
class Probe:
    name: str
    unit: str
    worse: int  # +1: larger is worse (downtime, time); -1: smaller is worse (throughput)
    min_shift: float  # a shift below this is no regression, however significant


PROBES = {p.name: p for p in (Probe("hypervisor", "ms", 1, 10.0), Probe("guest", "ms", 1, 10.0),
                              Probe("network", "ms", 1, 10.0), Probe("total", "s", 1, 0.5),
                              Probe("throughput", "MiB/s", -1, 1.0))}
MIN_SHIFT_MS = PROBES["guest"].min_shift


@dataclass(frozen=True)
class Run:
    path: Path
    verdicts: dict[str, str]  # test node id -> pass | excused | fail | skipped
    samples: dict[str, dict[str, list[float]]]  # scenario -> probe -> one figure per migration
    memory: dict[str, dict[str, int]]  # scenario -> the oracle's readings: moves, moves_with_lost_pages, lost_pages
    findings: dict[str, Counter]  # test node id -> finding kind -> how many


def _figures(rec: dict) -> dict[str, float]:
    """One migration's figures per probe (absent ones left out)."""
    out = {probe: float(v) for probe, v in (rec.get("downtime_ms") or {}).items()
           if probe in PROBES and isinstance(v, (int, float))}
    if isinstance(rec.get("total_s"), (int, float)):
        out["total"] = float(rec["total_s"])
    stats = rec.get("libvirt_stats") or {}
    moved, elapsed = stats.get("data_processed"), stats.get("time_elapsed")
    if isinstance(moved, (int, float)) and isinstance(elapsed, (int, float)) and elapsed > 0:
        out["throughput"] = moved / 2**20 / (elapsed / 1000)
    return out


def load(path: Path) -> Run:
    junit, records = path / "junit.xml", path / "results.jsonl"
    if not junit.exists() or not records.exists():
        raise ReportError(f"{path}: not a run folder (needs junit.xml and results.jsonl); pass reports/<run-id>")
    verdicts = {o.nodeid: o.state for o in read_junit(junit)}
    samples: dict[str, dict[str, list[float]]] = {}
    memory: dict[str, dict[str, int]] = {}
    findings: dict[str, Counter] = {}
    for rec in read_records(path):
        if rec.get("test") and isinstance(rec.get("findings"), list):
            kinds = findings.setdefault(rec["test"], Counter())
            kinds.update(f.get("kind", "?") for f in rec["findings"] if isinstance(f, dict))
        wrong = _oracle_wrong(rec)
        if wrong is not None:
            seen = memory.setdefault(rec.get("scenario", "?"), {"moves": 0, "moves_with_lost_pages": 0, "lost_pages": 0})
            seen["moves"] += 1
            seen["moves_with_lost_pages"] += wrong > 0
            seen["lost_pages"] += wrong
        if rec.get("kind") != "live-migration" or not rec.get("ok", True) or not isinstance(rec.get("downtime_ms"), dict):
            continue
        for probe, value in _figures(rec).items():
            samples.setdefault(rec.get("scenario", "?"), {}).setdefault(probe, []).append(value)
    return Run(path, verdicts, samples, memory, findings)


def _oracle_wrong(rec: dict) -> int | None:
    """Pages the dirty-page oracle found wrong after one move (read from outside a paused destination, or by
    the agent), None when the record has no oracle reading."""
    if rec.get("kind") == "oracle-migration" and isinstance(rec.get("paused_destination_check"), dict):
        return int(rec["paused_destination_check"].get("wrong", 0))
    if rec.get("kind") == "live-migration" and isinstance(rec.get("oracle"), dict):
        return int(rec["oracle"].get("wrong", 0))
    return None


@dataclass(frozen=True)
class Shift:
    scenario: str
    probe: str
    n: tuple[int, int]
    base: tuple[float, float, float]  # min, median, max
    cand: tuple[float, float, float]
    median_shift: float  # candidate median minus baseline median, in the probe's unit
    limit: float
    p_value: float | None  # one-sided: the candidate's values are worse
    effect: float | None  # rank-biserial correlation, -1..1 (positive: candidate worse)
    regression: bool
    judged: bool  # enough samples on both sides
    unit: str = "ms"


def _describe(values: list[float]) -> tuple[float, float, float]:
    return (min(values), statistics.median(values), max(values))


def shift(scenario: str, probe: str, base: list[float], cand: list[float]) -> Shift:
    kind = PROBES[probe]
    b, c = _describe(base), _describe(cand)
    moved = c[1] - b[1]
    limit = max(kind.min_shift, abs(b[1]) * MIN_SHIFT_PCT / 100)
    p = effect = None
    if len(base) >= 2 and len(cand) >= 2:
        from scipy.stats import mannwhitneyu  # 0.8 s to import: paid by a comparison, not by every command
        test = mannwhitneyu(cand, base, alternative="greater" if kind.worse > 0 else "less")
        p = float(test.pvalue)
        effect = kind.worse * (2 * float(test.statistic) / (len(base) * len(cand)) - 1)
    judged = min(len(base), len(cand)) >= MIN_SAMPLES
    regression = judged and p is not None and p < ALPHA and moved * kind.worse > limit
    return Shift(scenario, probe, (len(base), len(cand)), b, c, round(moved, 3), round(limit, 3), p, effect,
                 regression, judged, kind.unit)


def _test_change(nodeid: str, a: str | None, b: str | None, base: Run, cand: Run) -> dict:
    new_kinds = sorted(set(cand.findings.get(nodeid, ())) - set(base.findings.get(nodeid, ())))
    if a in RANK and b in RANK:
        change = "worse" if RANK[b] < RANK[a] else "better" if RANK[b] > RANK[a] else "same"
        if change == "same" and new_kinds:
            change = "worse evidence"
        return {"test": nodeid, "base": a, "cand": b, "change": change, "new_findings": new_kinds,
                "regression": change in ("worse", "worse evidence")}
    if a in RANK:  # the baseline judged it; the candidate skipped it or did not run it
        return {"test": nodeid, "base": a, "cand": b, "change": "missing on the candidate", "new_findings": [],
                "regression": False, "missing": f"{nodeid}: {a} on the baseline, {b or 'not run'} on the candidate"}
    return {"test": nodeid, "base": a, "cand": b, "change": "same" if a == b else "only on the candidate",
            "new_findings": [], "regression": False}


def _memory_change(scenario: str, base: dict | None, cand: dict | None) -> dict:
    row = {"scenario": scenario, "base": base, "cand": cand, "regression": False}
    if base and not cand:
        row["missing"] = f"{scenario}: {base['moves']} move(s) checked by the oracle on the baseline, none on the candidate"
    elif base and cand:
        # Per move, so that a candidate run with more repetitions is not held to a larger total.
        row["regression"] = cand["lost_pages"] * base["moves"] > base["lost_pages"] * cand["moves"] or \
            cand["moves_with_lost_pages"] * base["moves"] > base["moves_with_lost_pages"] * cand["moves"]
    elif cand and cand["lost_pages"]:
        row["regression"] = True  # pages lost where the baseline had no oracle reading at all
    return row


def compare(base: Run, cand: Run) -> dict:
    tests = [_test_change(t, base.verdicts.get(t), cand.verdicts.get(t), base, cand)
             for t in sorted(set(base.verdicts) | set(cand.verdicts))]
    shifts, missing = [], [t["missing"] for t in tests if "missing" in t]
    for scenario in sorted(base.samples):
        for probe in PROBES:
            values = base.samples[scenario].get(probe)
            if not values:
                continue
            other = cand.samples.get(scenario, {}).get(probe)
            if other:
                shifts.append(shift(scenario, probe, values, other))
            else:
                missing.append(f"{scenario} {probe}: {len(values)} sample(s) on the baseline, none on the candidate")
    memory = [_memory_change(sc, base.memory.get(sc), cand.memory.get(sc))
              for sc in sorted(set(base.memory) | set(cand.memory))]
    missing += [m["missing"] for m in memory if "missing" in m]
    regressions = [t["test"] + (f" (new findings: {', '.join(t['new_findings'])})" if t["new_findings"] else "")
                   for t in tests if t["regression"]] + \
        [f"{s.scenario} {s.probe}" for s in shifts if s.regression] + \
        [f"{m['scenario']} memory: {_memory_cell(m['base'])} -> {_memory_cell(m['cand'])}" for m in memory
         if m["regression"]]
    undecided = [f"{s.scenario} {s.probe} (n={s.n[0]}/{s.n[1]})" for s in shifts if not s.judged] + \
        [f"missing: {m}" for m in missing]
    return {"baseline": str(base.path), "candidate": str(cand.path), "alpha": ALPHA, "memory": memory,
            "min_shift": {"ms": MIN_SHIFT_MS, "pct": MIN_SHIFT_PCT}, "min_samples": MIN_SAMPLES, "tests": tests,
            "probes": [asdict(s) for s in shifts], "regressions": regressions, "undecided": undecided,
            "missing": missing}


def markdown(result: dict) -> str:
    lines = [f"# Release gate: {Path(result['candidate']).name} against {Path(result['baseline']).name}", "",
             f"**{len(result['regressions'])} regression(s)**" + (": " + "; ".join(result["regressions"])
                                                                 if result["regressions"] else ""), "",
             f"**{len(result['undecided'])} item(s) undecided** (fewer than {MIN_SAMPLES} migrations a side, or data "
             "the baseline has and the candidate lacks)" + (": " + "; ".join(result["undecided"])
                                                             if result["undecided"] else ""), "",
             "| test | baseline | candidate | change |", "|---|---|---|---|"]
    lines += [f"| `{t['test']}` | {t['base'] or '-'} | {t['cand'] or '-'} | {t['change']}"
              + (f": new {', '.join(t['new_findings'])}" if t.get("new_findings") else "") + " |"
              for t in result["tests"] if t["change"] != "same"]
    lines += ["", f"Probe shifts (one-sided Mann-Whitney U, alpha {result['alpha']}; a regression needs significance "
              f"and a median shift the wrong way beyond max(the probe's least shift, {MIN_SHIFT_PCT:g} %); "
              "throughput is worse when lower):", "",
              "| scenario | probe | n (base/cand) | baseline min/median/max | candidate min/median/max | "
              "median shift | p | effect | regression |", "|---|---|---|---|---|---|---|---|---|"]
    for s in result["probes"]:
        unit = s.get("unit", "ms")
        fmt = (lambda t: " / ".join(f"{v:.0f}" for v in t)) if unit == "ms" else \
            (lambda t: " / ".join(f"{v:.2f}" for v in t))  # noqa: E731
        p = "-" if s["p_value"] is None else f"{s['p_value']:.3f}"
        effect = "-" if s["effect"] is None else f"{s['effect']:+.2f}"
        lines.append(f"| {s['scenario']} | {s['probe']} ({unit}) | {s['n'][0]}/{s['n'][1]} | {fmt(s['base'])} | "
                     f"{fmt(s['cand'])} | {s['median_shift']:+.2f} | {p} | {effect} | "
                     f"{'yes' if s['regression'] else 'no' if s['judged'] else 'not judged'} |")
    if result.get("memory"):
        lines += ["", "Memory (the dirty-page oracle, after every move; more pages lost per move is a regression):", "",
                  "| scenario | baseline | candidate | regression |", "|---|---|---|---|"]
        lines += [f"| {m['scenario']} | {_memory_cell(m['base'])} | {_memory_cell(m['cand'])} | "
                  f"{'yes' if m.get('regression') else 'missing' if m.get('missing') else 'no'} |"
                  for m in result["memory"]]
    return "\n".join(lines) + "\n"


def _memory_cell(seen: dict | None) -> str:
    if not seen:
        return "-"
    if not seen["lost_pages"]:
        return f"0 pages lost in {seen['moves']} move(s)"
    return f"{seen['lost_pages']} pages lost, in {seen['moves_with_lost_pages']} of {seen['moves']} move(s)"


def gate(base_dir: Path, cand_dir: Path, out_dir: Path) -> dict:
    """Compare, write gate.json and gate.md into out_dir; the result says which regressions there are."""
    result = compare(load(base_dir), load(cand_dir))
    atomic_write_json(out_dir / "gate.json", result)
    atomic_write_text(out_dir / "gate.md", markdown(result))
    return result

"""The release gate: a baseline run and a candidate run compared, test by test and probe by probe.

A candidate regresses when a test's verdict gets worse (pass > excused > fail), or when a probe's
distribution shifts up beyond the stated limit with significance: a one-sided Mann-Whitney U test
(scipy) at ALPHA, the median shift above max(MIN_SHIFT_MS, MIN_SHIFT_PCT of the baseline median),
with the effect size (rank-biserial correlation) reported beside it. Few samples make a shift
insignificant rather than a regression: the table says n on each side.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy.stats import mannwhitneyu

from lab.errors import ReportError
from lab.results.records import read_records
from lab.results.report.junit import EXCUSED, FAIL, PASS, read_junit
from lab.util.files import atomic_write_json, atomic_write_text

ALPHA = 0.05
MIN_SHIFT_MS = 10.0
MIN_SHIFT_PCT = 20.0
# Below this many migrations a side, a shift is not judged: two runs of the same stack were seen to
# differ "significantly" at n=3 (precopy-idle, p=0.038, machine load). The gate then says so and
# exits 3 (undecided), never 0: run both sides with --repeat 6 or more.
MIN_SAMPLES = 6
RANK = {PASS: 2, EXCUSED: 1, FAIL: 0}  # skipped tests are not compared
PROBES = ("hypervisor", "guest", "network")


@dataclass(frozen=True)
class Run:
    path: Path
    verdicts: dict[str, str]  # test node id -> pass | excused | fail | skipped
    samples: dict[str, dict[str, list[float]]]  # scenario -> probe -> downtime ms of each migration
    memory: dict[str, dict[str, int]]  # scenario -> the oracle's readings: moves, moves_with_lost_pages, lost_pages


def load(path: Path) -> Run:
    junit, records = path / "junit.xml", path / "results.jsonl"
    if not junit.exists() or not records.exists():
        raise ReportError(f"{path}: not a run folder (needs junit.xml and results.jsonl); pass reports/<run-id>")
    verdicts = {o.nodeid: o.state for o in read_junit(junit)}
    samples: dict[str, dict[str, list[float]]] = {}
    memory: dict[str, dict[str, int]] = {}
    for rec in read_records(path):
        wrong = _oracle_wrong(rec)
        if wrong is not None:
            seen = memory.setdefault(rec.get("scenario", "?"), {"moves": 0, "moves_with_lost_pages": 0, "lost_pages": 0})
            seen["moves"] += 1
            seen["moves_with_lost_pages"] += wrong > 0
            seen["lost_pages"] += wrong
        if rec.get("kind") != "live-migration" or not rec.get("ok", True) or not isinstance(rec.get("downtime_ms"), dict):
            continue
        for probe, value in rec["downtime_ms"].items():
            if probe in PROBES and isinstance(value, (int, float)):
                samples.setdefault(rec.get("scenario", "?"), {}).setdefault(probe, []).append(float(value))
    return Run(path, verdicts, samples, memory)


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
    median_shift_ms: float
    limit_ms: float
    p_value: float | None  # one-sided: the candidate's values are larger
    effect: float | None  # rank-biserial correlation, -1..1 (positive: candidate larger)
    regression: bool
    judged: bool  # enough samples on both sides


def _describe(values: list[float]) -> tuple[float, float, float]:
    return (min(values), statistics.median(values), max(values))


def shift(scenario: str, probe: str, base: list[float], cand: list[float]) -> Shift:
    b, c = _describe(base), _describe(cand)
    moved = c[1] - b[1]
    limit = max(MIN_SHIFT_MS, b[1] * MIN_SHIFT_PCT / 100)
    p = effect = None
    if len(base) >= 2 and len(cand) >= 2:
        test = mannwhitneyu(cand, base, alternative="greater")
        p = float(test.pvalue)
        effect = 2 * float(test.statistic) / (len(base) * len(cand)) - 1
    judged = min(len(base), len(cand)) >= MIN_SAMPLES
    regression = judged and p is not None and p < ALPHA and moved > limit
    return Shift(scenario, probe, (len(base), len(cand)), b, c, round(moved, 3), round(limit, 3), p, effect,
                 regression, judged)


def compare(base: Run, cand: Run) -> dict:
    tests = []
    for nodeid in sorted(set(base.verdicts) | set(cand.verdicts)):
        a, b = base.verdicts.get(nodeid), cand.verdicts.get(nodeid)
        worse = a in RANK and b in RANK and RANK[b] < RANK[a]
        tests.append({"test": nodeid, "base": a, "cand": b, "change": "worse" if worse else
                      "better" if a in RANK and b in RANK and RANK[b] > RANK[a] else "same" if a == b else "only one side",
                      "regression": worse})
    shifts = [shift(scenario, probe, base.samples[scenario][probe], cand.samples[scenario][probe])
              for scenario in sorted(set(base.samples) & set(cand.samples))
              for probe in PROBES if probe in base.samples[scenario] and probe in cand.samples[scenario]]
    regressions = [t["test"] for t in tests if t["regression"]] + \
        [f"{s.scenario} {s.probe}" for s in shifts if s.regression]
    undecided = [f"{s.scenario} {s.probe} (n={s.n[0]}/{s.n[1]})" for s in shifts if not s.judged]
    memory = [{"scenario": sc, "base": base.memory.get(sc), "cand": cand.memory.get(sc)}
              for sc in sorted(set(base.memory) | set(cand.memory))]
    return {"baseline": str(base.path), "candidate": str(cand.path), "alpha": ALPHA, "memory": memory,
            "min_shift": {"ms": MIN_SHIFT_MS, "pct": MIN_SHIFT_PCT}, "min_samples": MIN_SAMPLES, "tests": tests,
            "probes": [asdict(s) for s in shifts], "regressions": regressions, "undecided": undecided}


def markdown(result: dict) -> str:
    lines = [f"# Release gate: {Path(result['candidate']).name} against {Path(result['baseline']).name}", "",
             f"**{len(result['regressions'])} regression(s)**" + (": " + "; ".join(result["regressions"])
                                                                 if result["regressions"] else ""), "",
             f"**{len(result['undecided'])} probe(s) not judged** (fewer than {MIN_SAMPLES} migrations a side)"
             + (": " + "; ".join(result["undecided"]) if result["undecided"] else ""), "",
             "| test | baseline | candidate | change |", "|---|---|---|---|"]
    lines += [f"| `{t['test']}` | {t['base'] or '-'} | {t['cand'] or '-'} | {t['change']} |"
              for t in result["tests"] if t["change"] != "same"]
    lines += ["", f"Probe shifts (downtime ms; one-sided Mann-Whitney U, alpha {result['alpha']}; a regression "
              f"needs significance and a median shift above max({MIN_SHIFT_MS:g} ms, {MIN_SHIFT_PCT:g} %)):", "",
              "| scenario | probe | n (base/cand) | baseline min/median/max | candidate min/median/max | "
              "median shift | p | effect | regression |", "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda t: " / ".join(f"{v:.0f}" for v in t)  # noqa: E731
    for s in result["probes"]:
        p = "-" if s["p_value"] is None else f"{s['p_value']:.3f}"
        effect = "-" if s["effect"] is None else f"{s['effect']:+.2f}"
        lines.append(f"| {s['scenario']} | {s['probe']} | {s['n'][0]}/{s['n'][1]} | {fmt(s['base'])} | {fmt(s['cand'])} "
                     f"| {s['median_shift_ms']:+.1f} | {p} | {effect} | "
                     f"{'yes' if s['regression'] else 'no' if s['judged'] else 'not judged'} |")
    if result.get("memory"):
        lines += ["", "Memory (the dirty-page oracle, after every move):", "",
                  "| scenario | baseline | candidate |", "|---|---|---|"]
        lines += [f"| {m['scenario']} | {_memory_cell(m['base'])} | {_memory_cell(m['cand'])} |" for m in result["memory"]]
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

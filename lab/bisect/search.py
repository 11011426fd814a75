"""The search: git bisect's, with verdicts that can be undecided or flaky.

Candidates are ordered, the first known good (the reference every run is compared with), the last the bad
side. A step's verdict is `confirm` runs that all agree: all bad is bad, all good is good; runs that disagree
(a flaky verdict) or that cannot be judged (too little data, infrastructure) make the step undecided, and
it is skipped as `git bisect skip` does: the next untried candidate nearest the middle is tried instead. The
bad side itself is confirmed first: a bad side that is not bad on every run is reported as such, never
bisected (it would name a wrong commit). The result is the first bad candidate with the last good one
before it, or, when skips leave several, the range that holds it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

GOOD, BAD, UNDECIDED = "good", "bad", "undecided"


@dataclass
class Run:
    verdict: str  # good | bad | undecided
    evidence: str  # what decided it (the regressions, or what was missing)
    build_s: float = 0.0
    test_s: float = 0.0
    folder: str = ""


@dataclass
class Step:
    index: int
    label: str
    verdict: str
    runs: list[Run] = field(default_factory=list)


@dataclass
class Outcome:
    state: str  # found | undecided
    first_bad: int | None = None
    last_good: int | None = None
    why: str = ""
    steps: list[Step] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def builds(self) -> int:
        return sum(len(s.runs) for s in self.steps)


def decide(runs: list[Run]) -> str:
    verdicts = {r.verdict for r in runs}
    return verdicts.pop() if len(verdicts) == 1 and UNDECIDED not in verdicts else UNDECIDED


def bisect(candidates: list[str], run: Callable[[int, int], Run], say: Callable[[str], None],
           confirm: int = 2) -> Outcome:
    """`run(index, attempt)` builds and runs candidate `index` once and judges it against candidate 0's run."""
    began = time.monotonic()
    out = Outcome("undecided", candidates=candidates)
    expected = max(1, math.ceil(math.log2(max(2, len(candidates) - 1))))

    def step(index: int) -> str:
        s = Step(index, candidates[index], UNDECIDED)
        for attempt in range(confirm):
            r = run(index, attempt)
            s.runs.append(r)
            say(f"bisect: step {len(out.steps) + 1} of about {expected}: {candidates[index]} run {attempt + 1}: "
                f"{r.verdict} (build {r.build_s:.0f} s, test {r.test_s:.0f} s): {r.evidence}")
            if decide(s.runs) == UNDECIDED:
                break  # runs disagree or cannot be judged: no more runs make it decided
        s.verdict = decide(s.runs) if len(s.runs) == confirm else UNDECIDED
        out.steps.append(s)
        return s.verdict

    lo, hi = 0, len(candidates) - 1
    if hi < 1:
        out.why = "nothing to bisect: the good and the bad side are the same"
        return out
    bad = step(hi)
    if bad != BAD:
        verdicts = ", ".join(r.verdict for r in out.steps[-1].runs)
        out.why = (f"the bad side {candidates[hi]} is not bad on every run ({verdicts}): a flaky or missing "
                   "regression is not bisected; repeat with more runs or a sharper selection")
        out.wall_s = time.monotonic() - began
        return out
    skipped: set[int] = set()
    while hi - lo > 1:
        inside = [i for i in range(lo + 1, hi) if i not in skipped]
        if not inside:
            out.why = (f"undecided between {candidates[lo]} (good) and {candidates[hi]} (bad): every candidate "
                       f"between them was undecided ({', '.join(candidates[i] for i in range(lo + 1, hi))})")
            out.last_good, out.first_bad = lo, hi
            out.wall_s = time.monotonic() - began
            return out
        middle = (lo + hi) / 2
        mid = min(inside, key=lambda i: (abs(i - middle), i))
        verdict = step(mid)
        if verdict == GOOD:
            lo = mid
        elif verdict == BAD:
            hi = mid
        else:
            skipped.add(mid)
    out.state, out.last_good, out.first_bad = "found", lo, hi
    out.why = f"first bad: {candidates[hi]}; last good before it: {candidates[lo]}"
    out.wall_s = time.monotonic() - began
    return out

"""Summary statistics for repeated measurements, and which one a verdict stands on.

A verdict stands on the maximum: every move is held to the scenario's limit, so one move at 60 s among
twenty at 250 ms fails, however many moves were made. The p95 is shown beside it from P95_FROM samples
on (below that it would be the maximum minus a bit); it is reported, never judged instead.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

P95_FROM = 20


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if len(values) == 1:
        return float(values[0])
    if pct == 100:
        return float(max(values))
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1] if pct >= 1 else float(min(values))


@dataclass(frozen=True)
class Summary:
    n: int
    min: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        return cls(len(values), min(values), percentile(values, 50), percentile(values, 95), max(values))

    @property
    def basis(self) -> str:
        """The statistic a verdict stands on, named as such."""
        return f"max (n={self.n}: every move held to the limit)"

    @property
    def judged(self) -> float:
        return self.max

    def __str__(self) -> str:
        p95 = f" / p95 {self.p95:.1f}" if self.n >= P95_FROM else ""
        return f"min {self.min:.1f} / p50 {self.p50:.1f}{p95} / max {self.max:.1f} (n={self.n})"

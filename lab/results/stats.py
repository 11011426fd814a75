"""Summary statistics for repeated measurements, and which one a verdict stands on.

p95 only from P95_FROM samples on: below that, "p95" would be the maximum minus a bit, so the
verdict is on the maximum and says so.
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
        return "p95" if self.n >= P95_FROM else f"max (n={self.n} < {P95_FROM}: verdict on the maximum)"

    @property
    def judged(self) -> float:
        return self.p95 if self.n >= P95_FROM else self.max

    def __str__(self) -> str:
        p95 = f" / p95 {self.p95:.1f}" if self.n >= P95_FROM else ""
        return f"min {self.min:.1f} / p50 {self.p50:.1f}{p95} / max {self.max:.1f} (n={self.n})"

"""Summary statistics for repeated measurements: min, p50, p95, max."""
from __future__ import annotations

import math
from dataclasses import dataclass


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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

    def __str__(self) -> str:
        return f"min {self.min:.1f} / p50 {self.p50:.1f} / p95 {self.p95:.1f} / max {self.max:.1f} (n={self.n})"

"""thresholds.yaml: the live migration limits per scenario and the tolerances, validated like lab.yaml.

A scenario names only what differs from `defaults`; it is stored complete (the defaults
filled in), so a verdict reads one Limits.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from lab.config.common import PositiveNumber
from lab.config.validation import Document, Model, load_file, problem, validated

DEFAULT_THRESHOLDS = Path(__file__).resolve().parents[2] / "thresholds.yaml"
PROBES = ("hypervisor", "guest", "network")


class Tolerance(Model):
    """How far the three downtime figures may stray from each other and from what was configured."""

    probe_period_ms: PositiveNumber = 1.0
    bandwidth_pct: PositiveNumber = 25.0
    max_downtime_ms: PositiveNumber = 250.0
    hypervisor_overestimate_ms: PositiveNumber = 25.0
    hypervisor_underreport_ms: PositiveNumber = 100.0
    guest_over_network_ms: PositiveNumber = 100.0  # heartbeats may stop this much longer than echo replies
    direction_factor: PositiveNumber = 5.0  # one direction of a cross-version move may take this many times the other


class Limits(Model):
    """What one scenario is judged by: the downtime per probe, and the whole migration's duration."""

    downtime_ms: dict[str, PositiveNumber] = Field(default_factory=dict, validate_default=True)  # all of PROBES
    total_s: PositiveNumber
    # How many times slower the guest's steady work may run during the migration than before it (median unit
    # time; lab/migration/degradation.py). None: recorded, not judged (a thresholds file that names none).
    slowdown: PositiveNumber | None = None

    @field_validator("downtime_ms", mode="before")
    @classmethod
    def _known_probes(cls, raw: Any) -> Any:
        for probe in raw if isinstance(raw, dict) else ():
            if probe not in PROBES:
                raise problem(str(probe), f"unknown probe (allowed: {', '.join(PROBES)})")
        return raw

    @field_validator("downtime_ms")
    @classmethod
    def _every_probe(cls, downtime: dict[str, float]) -> dict[str, float]:
        missing = [p for p in PROBES if p not in downtime]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return downtime


class ColdLimits(Model):
    """The cold migration suite's limits."""

    interruption_s: PositiveNumber = 90.0  # last echo reply before shutdown to first after boot
    live_vs_cold_max_ratio: PositiveNumber = 0.25  # live interruption must stay below this share of cold's


class Thresholds(Document):
    """A whole thresholds.yaml."""

    null_means_default = ("tolerance", "scenarios", "cold")
    tolerance: Tolerance = Field(default_factory=Tolerance)
    defaults: Limits = Field(description="a mapping with downtime_ms and total_s")
    scenarios: dict[str, Limits] = Field(default_factory=dict)
    cold: ColdLimits = Field(default_factory=ColdLimits)

    @field_validator("scenarios", mode="before")
    @classmethod
    def _inherit_defaults(cls, raw: Any, info: ValidationInfo) -> Any:
        """Each scenario on top of `defaults` (a wrong scenario keeps its wrong parts, to be named)."""
        base = info.data.get("defaults")
        if not isinstance(raw, dict):
            return raw
        out = {}
        for name, limits in raw.items():
            if base is not None and isinstance(limits, dict):
                downtime = limits.get("downtime_ms", {})
                limits = {"total_s": base.total_s, "slowdown": base.slowdown, **limits,
                          "downtime_ms": {**base.downtime_ms, **downtime} if isinstance(downtime, dict) else downtime}
            out[str(name)] = limits
        return out

    def for_scenario(self, scenario: str) -> Limits:
        return self.scenarios.get(scenario, self.defaults)


def parse_thresholds(data: Any, source: str = "<string>") -> Thresholds:
    return validated(Thresholds, data, root="thresholds.yaml", source=source)


def load_thresholds(path: str | os.PathLike | None = None) -> Thresholds:
    """thresholds.yaml from PATH, $LAB_THRESHOLDS, or the repo's, in that order."""
    chosen = Path(path or os.environ.get("LAB_THRESHOLDS") or DEFAULT_THRESHOLDS)
    return load_file(chosen, "thresholds file", "pass --thresholds PATH",
                     lambda data: parse_thresholds(data, str(chosen)))

"""thresholds.yaml: the live migration limits per scenario and the tolerances, validated like lab.yaml.

Two forms. With `model` (the repo's file), a scenario's limits are the migration model's figures for this
lab's calibration times a factor (lab/calibration/), and `overrides` replace single figures, each with its
reason. With `defaults` (hand-set files, e.g. a lab's own), a scenario names only what differs from them
and is stored complete (the defaults filled in). Either way a verdict reads one Limits, whose `basis` says
where each figure came from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lab.config.common import PositiveNumber
from lab.config.validation import Document, Model, load_file, problem, validated
from lab.errors import ConfigError

DEFAULT_THRESHOLDS = Path(__file__).resolve().parents[2] / "thresholds.yaml"
PROBES = ("hypervisor", "guest", "network")
NEVER_S = 1e9  # the total limit of a scenario the model says cannot converge (the watchdog's budget ends it)


class Tolerance(Model):
    """How far the three downtime figures may stray from each other and from what was configured."""

    probe_period_ms: PositiveNumber = 1.0
    bandwidth_pct: PositiveNumber = 25.0
    max_downtime_ms: PositiveNumber = 250.0
    hypervisor_overestimate_ms: PositiveNumber = 50.0
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


class JudgedLimits(Limits):
    """A scenario's limits as a verdict reads them: the figures, and where each came from."""

    basis: dict[str, str] = Field(default_factory=dict)  # per figure: "model 120 ms, factor 3" or an override's reason
    model: dict = Field(default_factory=dict)  # the model's expectation the figures follow from (empty: hand-set)


class ModelFactors(Model):
    """Limits from the lab's calibration: allowed = factor x the model's figure (lab/calibration/model.py)."""

    downtime_factor: PositiveNumber = 3.0
    total_factor: PositiveNumber = 3.0
    downtime_floor_ms: PositiveNumber = 150.0  # no downtime limit below this (the runner's own scheduling noise)
    slowdown: PositiveNumber | None = None  # the guest's work may run this many times slower; None: recorded only


class Override(Model):
    """One scenario's figures set by hand on top of the model, with the reason the model does not cover them."""

    downtime_ms: dict[str, PositiveNumber] = Field(default_factory=dict)
    total_s: PositiveNumber | None = None
    slowdown: PositiveNumber | None = None
    reason: str = Field(min_length=10, description="why the model's figure does not hold for this scenario")

    _known_probes = field_validator("downtime_ms", mode="before")(Limits._known_probes.__func__)


HAND_SET_COLD_S = 90.0  # a hand-set file's cold limit where it names none (the old default)


class ColdLimits(Model):
    """The cold migration suite's limits."""

    # Last echo reply before shutdown to first after boot. Set by hand only with `defaults`: with `model` it is
    # total_factor x the calibrated cold move (plus the disk copy), overridable as scenario "cold-<storage>".
    interruption_s: PositiveNumber | None = None
    live_vs_cold_max_ratio: PositiveNumber = 0.25  # live interruption must stay below this share of cold's


class Thresholds(Document):
    """A whole thresholds.yaml."""

    null_means_default = ("tolerance", "scenarios", "cold")
    tolerance: Tolerance = Field(default_factory=Tolerance)
    model: ModelFactors | None = None
    overrides: dict[str, Override] = Field(default_factory=dict)
    defaults: Limits | None = Field(None, description="a mapping with downtime_ms and total_s")
    scenarios: dict[str, Limits] = Field(default_factory=dict)
    cold: ColdLimits = Field(default_factory=ColdLimits)

    @model_validator(mode="after")
    def _one_form(self) -> "Thresholds":
        if (self.model is None) == (self.defaults is None):
            raise ValueError("give either `model` (limits from the lab's calibration) or `defaults` (limits by hand)")
        if self.overrides and self.model is None:
            raise ValueError("`overrides` go with `model`; with `defaults`, name the scenario under `scenarios`")
        if self.model is not None and self.cold.interruption_s is not None:
            raise ValueError("cold.interruption_s goes with `defaults`; with `model` the cold limit follows from the "
                             "calibration (set one by hand as overrides: {cold-shared: {total_s: ..., reason: ...}})")
        return self

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

    def for_scenario(self, scenario: str, expectation=None) -> JudgedLimits:
        """The scenario's limits. `expectation` (model.Expectation): the model's figures, which a file with
        `model` needs: a missing calibration is an error, never a default standing in for it."""
        if self.model is None:
            limits = self.scenarios.get(scenario, self.defaults)
            return JudgedLimits(**limits.model_dump(), basis={f: f"set by hand in {Path(self.source).name}"
                                                              for f in (*PROBES, "total_s")})
        if expectation is None:
            raise ConfigError(f"{self.source}: the limits of {scenario!r} follow from the lab's calibration, and none "
                              "was given; run `python -m lab calibrate`, or give a thresholds file with `defaults`")
        f, over = self.model, self.overrides.get(scenario)
        downtime, basis = {}, {}
        for p in PROBES:
            model_ms = expectation.downtime_ms[p]
            downtime[p] = round(max(f.downtime_factor * model_ms, f.downtime_floor_ms), 1)
            basis[p] = f"model {model_ms:.0f} ms, factor {f.downtime_factor:g}" + \
                (f", raised to the floor of {f.downtime_floor_ms:g} ms" if downtime[p] > f.downtime_factor * model_ms
                 else "")
        if expectation.converges:
            total, basis["total_s"] = round(f.total_factor * expectation.total_s, 2), \
                f"model {expectation.total_s:.2f} s, factor {f.total_factor:g}"
        else:
            total, basis["total_s"] = NEVER_S, "the model says it cannot converge: its total time is not judged"
        slowdown = f.slowdown
        for probe, figure in (over.downtime_ms.items() if over else ()):
            downtime[probe], basis[probe] = figure, f"override: {over.reason}"
        if over and over.total_s:
            total, basis["total_s"] = over.total_s, f"override: {over.reason}"
        if over and over.slowdown:
            slowdown = over.slowdown
        return JudgedLimits(downtime_ms=downtime, total_s=total, slowdown=slowdown, basis=basis,
                      model=expectation.as_record())


    def for_cold(self, storage: str, expectation: tuple[float, str] | None) -> tuple[float, str]:
        """Cold-<storage>'s interruption limit and its basis. `expectation` (model.expect_cold): the model's
        seconds and how; a file with `model` needs it."""
        scenario = f"cold-{storage}"
        if self.model is None:
            return self.cold.interruption_s or HAND_SET_COLD_S, f"set by hand in {Path(self.source).name}"
        over = self.overrides.get(scenario)
        if over and over.total_s:
            return over.total_s, f"override: {over.reason}"
        if expectation is None:
            raise ConfigError(f"{self.source}: the cold limit follows from the lab's calibration, whose file has no "
                              "cold move; run `python -m lab calibrate --again`, or give a thresholds file with "
                              "`defaults`")
        model_s, how = expectation
        return round(self.model.total_factor * model_s, 1), f"model {model_s:.1f} s ({how}), factor " \
            f"{self.model.total_factor:g}"


def parse_thresholds(data: Any, source: str = "<string>") -> Thresholds:
    return validated(Thresholds, data, root="thresholds.yaml", source=source)


def load_thresholds(path: str | os.PathLike | None = None) -> Thresholds:
    """thresholds.yaml from PATH, $LAB_THRESHOLDS, or the repo's, in that order."""
    chosen = Path(path or os.environ.get("LAB_THRESHOLDS") or DEFAULT_THRESHOLDS)
    return load_file(chosen, "thresholds file", "pass --thresholds PATH",
                     lambda data: parse_thresholds(data, str(chosen)))

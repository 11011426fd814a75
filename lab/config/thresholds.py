"""thresholds.yaml: limits per scenario and the tolerances, validated like lab.yaml."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.errors import ConfigError

DEFAULT_THRESHOLDS = Path(__file__).resolve().parents[2] / "thresholds.yaml"
PROBES = ("hypervisor", "guest", "network")


@dataclass(frozen=True)
class Tolerance:
    probe_period_ms: float = 1.0
    bandwidth_pct: float = 25.0
    max_downtime_ms: float = 250.0
    hypervisor_overestimate_ms: float = 25.0


@dataclass(frozen=True)
class Limits:
    downtime_ms: dict[str, float]
    total_s: float


@dataclass(frozen=True)
class ColdLimits:
    interruption_s: float = 90.0  # last echo reply before shutdown to first after boot
    live_vs_cold_max_ratio: float = 0.25  # live interruption must stay below this share of cold's


@dataclass(frozen=True)
class Thresholds:
    tolerance: Tolerance
    defaults: Limits
    scenarios: dict[str, Limits] = field(default_factory=dict)
    cold: ColdLimits = field(default_factory=ColdLimits)
    source: str = "<defaults>"

    def for_scenario(self, scenario: str) -> Limits:
        return self.scenarios.get(scenario, self.defaults)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}: {value!r} is not a positive number")
    return float(value)


def _limits(data: Any, where: str, base: Limits | None) -> Limits:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with downtime_ms and total_s")
    for key in data:
        if key not in ("downtime_ms", "total_s"):
            raise ConfigError(f"{where}.{key}: unknown key (allowed: downtime_ms, total_s)")
    downtime = dict(base.downtime_ms) if base else {}
    raw = data.get("downtime_ms", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}.downtime_ms: expected a mapping of {', '.join(PROBES)}")
    for probe, value in raw.items():
        if probe not in PROBES:
            raise ConfigError(f"{where}.downtime_ms.{probe}: unknown probe (allowed: {', '.join(PROBES)})")
        downtime[probe] = _number(value, f"{where}.downtime_ms.{probe}")
    missing = [p for p in PROBES if p not in downtime]
    if missing:
        raise ConfigError(f"{where}.downtime_ms: missing {', '.join(missing)}")
    if "total_s" in data:
        total = _number(data["total_s"], f"{where}.total_s")
    elif base:
        total = base.total_s
    else:
        raise ConfigError(f"{where}.total_s: missing")
    return Limits(downtime, total)


def parse_thresholds(data: Any, source: str = "<string>") -> Thresholds:
    if not isinstance(data, dict):
        raise ConfigError("thresholds.yaml: expected a mapping with tolerance, defaults, scenarios")
    for key in data:
        if key not in ("tolerance", "defaults", "scenarios", "cold"):
            raise ConfigError(f"{key}: unknown key (allowed: tolerance, defaults, scenarios, cold)")
    tol_raw = data.get("tolerance") or {}
    if not isinstance(tol_raw, dict):
        raise ConfigError("tolerance: expected a mapping")
    allowed = Tolerance.__dataclass_fields__
    for key in tol_raw:
        if key not in allowed:
            raise ConfigError(f"tolerance.{key}: unknown key (allowed: {', '.join(allowed)})")
    tolerance = Tolerance(**{k: _number(v, f"tolerance.{k}") for k, v in tol_raw.items()})
    defaults = _limits(data.get("defaults"), "defaults", None)
    scenarios_raw = data.get("scenarios") or {}
    if not isinstance(scenarios_raw, dict):
        raise ConfigError("scenarios: expected a mapping of scenario id to limits")
    scenarios = {str(k): _limits(v, f"scenarios.{k}", defaults) for k, v in scenarios_raw.items()}
    cold_raw = data.get("cold") or {}
    if not isinstance(cold_raw, dict):
        raise ConfigError("cold: expected a mapping")
    for key in cold_raw:
        if key not in ColdLimits.__dataclass_fields__:
            raise ConfigError(f"cold.{key}: unknown key (allowed: {', '.join(ColdLimits.__dataclass_fields__)})")
    cold = ColdLimits(**{k: _number(v, f"cold.{k}") for k, v in cold_raw.items()})
    return Thresholds(tolerance, defaults, scenarios, cold, source)


def load_thresholds(path: str | os.PathLike | None = None) -> Thresholds:
    chosen = Path(path or os.environ.get("LAB_THRESHOLDS") or DEFAULT_THRESHOLDS)
    try:
        data = yaml.safe_load(chosen.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{chosen}: thresholds file not found (pass --thresholds PATH)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        return parse_thresholds(data, str(chosen))
    except ConfigError as exc:
        raise ConfigError(f"{chosen}: {exc}") from None

"""Verdicts computed from findings: pass, fail, or excused by a registered known defect.

A finding is one thing a check found wrong, with a kind from a fixed list (so a
defect's signature names kinds, never free text). A failure is excused only when
the stack is in the defect's range, its evidence is among the findings, and
every finding is one the defect explains: a harness bug or any other failure
next to a known defect still fails. The registry is data: known_defects.yaml.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from lab.config.validation import load_file, validated
from lab.errors import ConfigError

DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "known_defects.yaml"


class Kind(str, Enum):
    LOST_PAGES = "lost-pages"  # the dirty-page oracle found pages that missed a write
    GUEST_REBOOTED = "guest-rebooted"  # boot id changed across a migration
    TWO_BOOT_IDS = "two-boot-ids"  # heartbeats from two boots in one window
    SPLIT_BRAIN = "split-brain"  # the guest runs on a number of hosts other than one
    MEMORY_PATTERN = "memory-pattern"  # the fill pattern written before the migration changed
    DISK_CHANGED = "disk-changed"
    ECHO_SILENT = "echo-silent"  # the guest stopped answering after the migration
    MIGRATION_FAILED = "migration-failed"
    DOWNTIME_ABSENT = "downtime-absent"  # libvirt's job stats lack `downtime`
    TOTAL_TIME_ABSENT = "total-time-absent"  # libvirt's job stats lack `time_elapsed`
    THRESHOLD = "threshold"
    INVARIANT = "invariant"  # the probes disagree beyond the stated tolerances
    UNDERREPORTED = "hypervisor-underreports"  # the guest was silent far longer than libvirt's downtime
    HEARTBEAT_LOST = "heartbeat-lost"
    SETTING_IGNORED = "setting-ignored"  # a migration setting shows no sign of having been used (honoured.py)
    ORACLE_IDLE = "oracle-idle"  # the dirty-page oracle's writers did not advance: it checked no new writes


@dataclass(frozen=True)
class Finding:
    kind: Kind
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Stack:
    """What a verdict depends on of where it ran."""
    qemu: str  # e.g. "7.2.22"
    accelerator: str  # kvm | tcg
    mode: str = "precopy"
    backports: frozenset[str] = frozenset()  # upstream commits this QEMU carries beyond its version

    @classmethod
    def of(cls, versions: dict, accelerator: str, mode: str = "precopy") -> Stack:
        """From a host's entry of host_versions() (what a record's `versions.<host>` holds)."""
        return cls(versions.get("qemu_version", "unknown"), accelerator, mode,
                   frozenset(versions.get("backports") or ()))


class Upstream(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    commit: str
    subject: str
    fixed_in: str


class Affects(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    qemu: str  # a version range, PEP 440 style: "<9.0.0"
    accelerator: Literal["kvm", "tcg"] | None = None
    mode: Literal["precopy", "postcopy"] | None = None

    @field_validator("qemu")
    @classmethod
    def _range(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"{value!r} is not a version range like '<9.0.0'") from None
        return value


class KnownDefect(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    title: str
    upstream: Upstream | None = None  # the fix, for a defect
    by_design: str | None = None  # the documentation that says so, for a behaviour no fix will change
    affects: Affects
    evidence: list[Kind]  # at least one of these findings must be there: the defect's own signature
    explains: list[Kind]  # every finding must be of one of these kinds
    # A regular expression one evidence finding's text must match: the defect's own words (e.g. QEMU's
    # assertion message in the log the finding quotes), where a kind alone would excuse too much.
    signature: str | None = None

    @field_validator("signature")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _a_fix_or_by_design(self) -> KnownDefect:
        if (self.upstream is None) == (self.by_design is None):
            raise ValueError("give either upstream (the fix) or by_design (where it is documented), not both or neither")
        return self

    def reference(self) -> str:
        u = self.upstream
        if u is None:
            return f"{self.id}: {self.title}; by design ({self.by_design})"
        return f"{self.id}: {self.title}; fixed upstream by {u.commit} \"{u.subject}\" (QEMU {u.fixed_in})"

    def shown_by(self, findings: tuple[Finding, ...]) -> bool:
        """Its evidence is among the findings: a finding of an evidence kind (matching the signature, if any)."""
        return any(f.kind in self.evidence and (self.signature is None or re.search(self.signature, f.text))
                   for f in findings)

    def applies_to(self, stack: Stack) -> bool:
        if self.upstream and any(c.startswith(self.upstream.commit) or self.upstream.commit.startswith(c)
                                 for c in stack.backports):
            return False  # its fix is in this build (a backport), whatever the version says
        try:
            in_range = Version(stack.qemu) in SpecifierSet(self.affects.qemu)
        except InvalidVersion:
            return False  # an unknown version is never excused
        return (in_range and self.affects.accelerator in (None, stack.accelerator)
                and self.affects.mode in (None, stack.mode))


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    defects: list[KnownDefect]


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    chosen = Path(path or os.environ.get("LAB_KNOWN_DEFECTS") or DEFAULT_REGISTRY)
    registry = load_file(chosen, "known defects registry", "set LAB_KNOWN_DEFECTS=PATH",
                         lambda data: validated(Registry, data, root="known_defects.yaml"))
    ids = [d.id for d in registry.defects]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"{chosen}: defects: an id is used twice ({', '.join(sorted(ids))})")
    return registry


@dataclass(frozen=True)
class Verdict:
    state: Literal["pass", "fail", "excused"]
    findings: tuple[Finding, ...]
    defect: KnownDefect | None = None
    why: str = ""

    def as_record(self) -> dict:
        return {"state": self.state, "why": self.why, "defect": self.defect.id if self.defect else None,
                "findings": [{"kind": f.kind.value, "text": f.text} for f in self.findings]}


def judge(findings: list[Finding], stack: Stack, registry: Registry) -> Verdict:
    """pass with no findings; excused when one known defect explains them all; else fail."""
    found = tuple(findings)
    if not found:
        return Verdict("pass", found, why="no finding")
    kinds = {f.kind for f in found}
    for defect in registry.defects:
        if not defect.applies_to(stack):
            continue
        if defect.shown_by(found) and kinds <= set(defect.explains):
            return Verdict("excused", found, defect, f"excused by {defect.reference()}")
    candidates = [d.id for d in registry.defects if d.applies_to(stack) and d.shown_by(found)]
    unexplained = sorted(k.value for k in kinds)
    why = f"{len(found)} finding(s) of kind {', '.join(unexplained)}"
    if candidates:
        why += f"; {', '.join(candidates)} matched but does not explain them all"
    return Verdict("fail", found, why=why)

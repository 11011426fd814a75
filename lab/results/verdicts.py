"""Verdicts computed from findings: pass, fail, or excused by registered known defects.

A finding is one thing a check found wrong, with a kind from a fixed list (so a
defect's signature names kinds, never free text), and the move it was seen in.
A failure is excused only finding by finding: each must be explained by a defect
whose range takes that move's source or destination stack, whose evidence is
among the findings of the same move, whose signature (if any) the finding
matches, and whose bound (if any) its figure keeps. A harness bug, a finding of
another move, or any finding no defect explains still fails the test. The
registry is data: known_defects.yaml.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
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
    DISK_UNWRITABLE = "disk-unwritable"  # the guest's disk refuses writes where it runs (e.g. an image left inactive)
    ECHO_SILENT = "echo-silent"  # the guest stopped answering after the migration
    QEMU_ENDED = "qemu-ended"  # the guest's QEMU ended by itself where the guest ran (e.g. an assertion)
    MIGRATION_FAILED = "migration-failed"
    DOWNTIME_ABSENT = "downtime-absent"  # libvirt's job stats lack `downtime`
    TOTAL_TIME_ABSENT = "total-time-absent"  # libvirt's job stats lack `time_elapsed`
    THRESHOLD = "threshold"
    INVARIANT = "invariant"  # the probes disagree beyond the stated tolerances
    UNDERREPORTED = "hypervisor-underreports"  # the guest was silent far longer than libvirt's downtime
    HEARTBEAT_LOST = "heartbeat-lost"
    SETTING_IGNORED = "setting-ignored"  # a migration setting shows no sign of having been used (honoured.py)
    ORACLE_IDLE = "oracle-idle"  # the dirty-page oracle's writers did not advance: it checked no new writes
    DEGRADATION = "degradation"  # the guest's own work ran slower during the migration than its limit allows
    NOT_MEASURED = "not-measured"  # a check's own measurement missed: no verdict on the setting, and no pass
    STATISTIC_WRONG = "statistic-wrong"  # a figure the hypervisor reports contradicts what was measured (honoured.py)


@dataclass(frozen=True)
class Finding:
    kind: Kind
    text: str
    move: int | None = None  # the migration it was seen after (1..n; 0 the oracle's unmeasured one); None: the test's
    stacks: tuple["Stack", ...] = ()  # that move's source and destination stacks, where they are known
    figure_ms: float | None = None  # the figure a bounded excuse is held to (e.g. the guest's silence)

    def __str__(self) -> str:
        return self.text


def at_move(findings: list[Finding], move: int, stacks: tuple["Stack", ...], prefix: str = "") -> list[Finding]:
    """The findings of one migration, marked with it (and its stacks) for the excuses."""
    return [replace(f, move=move, stacks=stacks, text=prefix + f.text) for f in findings]


@dataclass(frozen=True)
class Stack:
    """What a verdict depends on of where it ran."""
    qemu: str  # e.g. "7.2.22"
    accelerator: str  # kvm | tcg
    mode: str = "precopy"
    backports: frozenset[str] = frozenset()  # upstream commits this QEMU carries beyond its version

    @classmethod
    def of(cls, versions: dict, accelerator: str, mode: str = "precopy") -> Stack:
        """From a host's entry of host_versions() (what a record's `versions.<host>` holds): the upstream
        commits it carries are the lab's patches' and those its distro changelog names."""
        return cls(versions.get("qemu_version", "unknown"), accelerator, mode,
                   frozenset([*(versions.get("backports") or ()), *(versions.get("changelog_commits") or ())]))

    @property
    def prerelease(self) -> bool:
        """QEMU's master says X.Y.50 from the day X.Y.0 is out (8.2.50 is 9.0's development) and X.Y.90 and up for
        the release candidates; stable releases stay below (X.Y.1 .. X.Y.n): which upstream commits a development
        tree or a candidate carries, its number cannot say (a fix merged for 9.0 is in 8.2.50 from that day)."""
        try:
            return Version(self.qemu).micro >= 50
        except InvalidVersion:
            return False


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
    # Which end of a move must run an affected stack: the source (e.g. dirty tracking), the destination, or either.
    side: Literal["source", "destination", "either"] = "either"

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
    # assertion message in the log the finding quotes), where a kind alone would excuse too much. Every
    # finding of an evidence kind must match it to be explained: one match excuses no other.
    signature: str | None = None
    # The largest figure (e.g. the guest's silence, ms) a finding may show and still be this behaviour: a
    # by_design entry must have one, or any silence at all would pass as "by design".
    bound_ms: float | None = None

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
        if self.by_design is not None and self.bound_ms is None:
            raise ValueError("a by_design entry needs bound_ms: the largest figure the documented behaviour explains")
        return self

    def reference(self) -> str:
        u = self.upstream
        if u is None:
            return f"{self.id}: {self.title}; by design ({self.by_design})"
        return f"{self.id}: {self.title}; fixed upstream by {u.commit} \"{u.subject}\" (QEMU {u.fixed_in})"

    def shown_by(self, findings: tuple[Finding, ...]) -> bool:
        """Its evidence is among the findings: a finding of an evidence kind (matching the signature, if any)."""
        return any(f.kind in self.evidence and self._matches(f) for f in findings)

    def _matches(self, finding: Finding) -> bool:
        if self.signature is not None and finding.kind in self.evidence and not re.search(self.signature, finding.text):
            return False
        if self.bound_ms is not None and (finding.figure_ms is None or finding.figure_ms > self.bound_ms):
            return False  # no figure, or beyond what the behaviour explains
        return True

    def explains_finding(self, finding: Finding) -> bool:
        return finding.kind in self.explains and self._matches(finding)

    def applies_to_move(self, stacks: tuple[Stack, ...]) -> bool:
        """(source, destination) of one move, or the one stack a test ran on."""
        ends = {"source": stacks[:1], "destination": stacks[-1:], "either": stacks}[self.affects.side]
        return any(self.applies_to(s) for s in ends)

    def applies_to(self, stack: Stack) -> bool:
        if self.upstream and any(c.startswith(self.upstream.commit) or self.upstream.commit.startswith(c)
                                 for c in stack.backports):
            return False  # its fix is in this build (a backport, or a distro patch its changelog names)
        try:
            in_range = Version(stack.qemu) in SpecifierSet(self.affects.qemu, prereleases=False)
        except InvalidVersion:
            return False  # an unknown version is never excused
        if stack.prerelease and self.upstream:
            return False  # a development build may carry the fix already: never excused on its number
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
    """pass with no findings; excused when every finding is explained by a defect shown in its own move (and
    applying to that move's stacks, or `stack` where the finding names none); else fail, naming the rest."""
    found = tuple(findings)
    if not found:
        return Verdict("pass", found, why="no finding")
    moves: dict[int | None, list[Finding]] = {}
    for f in found:
        moves.setdefault(f.move, []).append(f)
    used: list[KnownDefect] = []
    unexplained: list[Finding] = []
    for group in moves.values():
        stacks = group[0].stacks or (stack,)
        shown = [d for d in registry.defects if d.applies_to_move(stacks) and d.shown_by(tuple(group))]
        for f in group:
            defect = next((d for d in shown if d.explains_finding(f)), None)
            if defect is None:
                unexplained.append(f)
            elif defect not in used:
                used.append(defect)
    if not unexplained:
        return Verdict("excused", found, used[0], "excused by " + "; and by ".join(d.reference() for d in used))
    kinds = sorted({f.kind.value for f in unexplained})
    why = f"{len(unexplained)} of {len(found)} finding(s) explained by no known defect of their move: {', '.join(kinds)}"
    if used:
        why += f" ({', '.join(d.id for d in used)} explained the others)"
    return Verdict("fail", found, why=why)

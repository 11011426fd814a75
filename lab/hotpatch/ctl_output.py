"""Reading libcareplus's text output: what `libcare-ctl patch`, `unpatch` and `info`
and `libcare-dump -H` print, turned into results. The text is the only judge:
libcare-ctl exits 0 on "No patch(es) applicable" (a buildID mismatch), so a
result counts only when its success line is there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from lab.errors import HotpatchError
from lab.hotpatch.kpatch import KpatchHeader


@dataclass(frozen=True)
class ApplyResult:
    pid: int
    kpatch: str
    patch_id: str
    frozen_time_us: int | None  # how long libcare-ctl held the process stopped
    hunks: int
    raw_output: str
    seconds: float = 0.0  # wall time of the libcare-ctl call


@dataclass(frozen=True)
class UnapplyResult:
    pid: int
    patch_id: str
    frozen_time_us: int | None
    hunks: int
    raw_output: str


@dataclass(frozen=True)
class AppliedPatches:
    """`libcare-ctl info -p PID` for one patched object."""
    pid: int
    target: str
    buildid: str
    count: int
    patch_ids: tuple[str, ...]


def parse_info(text: str) -> list[AppliedPatches]:
    """`libcare-ctl info` output -> one entry per patched object, patch ids in the order applied."""
    out, cur = [], None
    ids: list[str] = []
    for line in text.splitlines() + [""]:  # the blank line closes the last block
        m = re.match(r"^(Pid|Target|Build id|Applied patch number|Patch id):\s*(.*?)\s*$", line)
        if m:
            key, value = m.groups()
            if key == "Pid":
                cur = {"pid": int(value)}
                ids = []
            elif cur is not None and key == "Patch id":
                ids.append(value)
            elif cur is not None:
                cur[key] = value
        elif cur is not None and not line.strip():
            out.append(AppliedPatches(cur["pid"], cur.get("Target", ""), cur.get("Build id", ""),
                                      int(cur.get("Applied patch number", len(ids))), tuple(ids)))
            cur = None
    return out


def _frozen(text: str, word: str) -> int | None:
    m = re.search(rf"process {word} frozen_time is (\d+) microsecond", text)
    return int(m.group(1)) if m else None


def parse_apply(text: str) -> tuple[int | None, int | None]:
    """(hunks applied or None, frozen_time_us or None) from `libcare-ctl patch` output."""
    m = re.search(r"(\d+) patch hunk\(s\) have been successfully applied", text)
    return (int(m.group(1)) if m else None), _frozen(text, "patch")


def parse_unapply(text: str) -> tuple[int | None, int | None]:
    """(hunks cancelled or None, frozen_time_us or None) from `libcare-ctl unpatch` output."""
    m = re.search(r"(\d+) patch hunk\(s\) were successfully cancelled", text)
    return (int(m.group(1)) if m else None), _frozen(text, "unpatch")


def parse_dump_header(text: str, path: str = "") -> KpatchHeader:
    """`libcare-dump -H -i FILE` output -> header."""
    fields = {}
    for line in text.splitlines():
        m = re.match(r"^(Patch Name|Magic|Patch id|buildid):\s*(.*?)\s*$", line)
        if m:
            fields[m.group(1)] = m.group(2)
    if "buildid" not in fields or "Patch id" not in fields:
        first = next((ln for ln in text.splitlines() if ln.strip()), "no output")
        raise HotpatchError(f"libcare-dump could not read {path or 'the kpatch'}: {first}")
    return KpatchHeader(fields.get("Patch Name", path), fields["Patch id"], fields["buildid"])

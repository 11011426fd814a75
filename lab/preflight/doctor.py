"""What `python -m lab doctor` adds to the runner: its flags read into a planned guest and
expectations (a bad value is one line naming the flag), and several host pairs checked at once."""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from lab.errors import LabError
from lab.preflight.context import PreflightContext, context_for
from lab.preflight.registry import FAIL, CheckResult
from lab.preflight.runner import run_preflight, table
from lab.runtime.lab import Lab

_SIZE = re.compile(r"(\d+)([MGT]?)(?:i?B)?", re.IGNORECASE)
_UNIT_MIB = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def size_mib(text: str, flag: str) -> int:
    """'2048', '2048M', '4G', '1TiB' -> MiB."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise LabError(f"{flag}: {text!r} is not a size (MiB, or with a unit: 2048, 4G, 1T)")
    return int(match.group(1)) * _UNIT_MIB[match.group(2).upper()]


def whole(text: str, flag: str, low: int, what: str) -> int:
    if not text.strip().isdigit() or int(text) < low:
        raise LabError(f"{flag}: {text!r} is not {what}")
    return int(text)


def name(text: str, flag: str, what: str) -> str:
    if not _NAME.fullmatch(text):
        raise LabError(f"{flag}: {text!r} is not {what}")
    return text


def plan_from_flags(memory: str | None = None, vcpus: str | None = None, disk: str | None = None,
                    cpu_model: str | None = None, machine: str | None = None) -> dict:
    """The planned guest's settings the flags change (None: as lab.yaml's guest has it)."""
    return {
        "memory_mib": None if memory is None else size_mib(memory, "--memory"),
        "vcpus": None if vcpus is None else whole(vcpus, "--vcpus", 1, "a number of vCPUs (1 or more)"),
        "disk_mib": None if disk is None else size_mib(disk, "--disk"),
        "cpu_model": None if cpu_model is None else name(cpu_model, "--cpu-model", "a CPU model name (e.g. qemu64; `virsh cpu-models x86_64`)"),
        "machine": None if machine is None else name(machine, "--machine", "a machine type (e.g. pc, q35; `virsh capabilities`)"),
    }


def expected_from_flags(max_downtime: str | None = None, bandwidth: str | None = None) -> dict:
    """The migration parameters configured for the check (absent: nothing configured)."""
    expected = {}
    if max_downtime is not None:
        expected["max_downtime_ms"] = whole(max_downtime, "--max-downtime", 0, "a whole number of milliseconds")
    if bandwidth is not None:
        expected["bandwidth_mibs"] = whole(bandwidth, "--bandwidth", 0, "a whole number of MiB/s (0: unlimited)")
    return expected


@dataclass
class PairReport:
    ctx: PreflightContext
    results: list[CheckResult]
    seconds: float

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == FAIL]

    def header(self) -> str:
        ctx = self.ctx
        what = (f"guest {ctx.guest}" if ctx.guest else
                f"planned guest {ctx.plan.describe()}; storage {ctx.storage_mode} at {ctx.plan.storage_path}")
        return f"preflight {ctx.src.name} -> {ctx.dst.name}, {what} ({self.seconds:.1f} s)"

    def text(self) -> str:
        return self.header() + "\n" + table(self.results)

    def as_dict(self) -> dict:
        return {"src": self.ctx.src.name, "dst": self.ctx.dst.name, "guest": self.ctx.guest,
                "plan": asdict(self.ctx.plan) if self.ctx.plan else None, "seconds": round(self.seconds, 2),
                "results": [asdict(r) for r in self.results]}


def check_pair(ctx: PreflightContext, only: list[str] | None = None) -> PairReport:
    start = time.monotonic()
    results = run_preflight(ctx, only)
    return PairReport(ctx, results, time.monotonic() - start)


def check_all_pairs(lab: Lab, only: list[str] | None = None, plan: dict | None = None,
                    **expected) -> list[PairReport]:
    """Every host pair of the lab, side by side (pairs share no host), for the planned guest."""
    if not lab.pairs:
        raise LabError(f"lab {lab.config.name!r} has no host pairs (lab.yaml pairs:)")
    contexts = [context_for(lab, a.name, b.name, plan=plan, **expected) for a, b in lab.pairs]
    with ThreadPoolExecutor(max_workers=len(contexts)) as pool:
        return list(pool.map(lambda ctx: check_pair(ctx, only), contexts))


def summary(reports: list[PairReport]) -> str:
    """One line: how many pairs are ready, and for each one that is not, which checks failed."""
    bad = [r for r in reports if r.failed]
    line = f"{len(reports)} pair(s): {len(reports) - len(bad)} ready, {len(bad)} not ready"
    return line + "".join(f"; {r.ctx.src.name} -> {r.ctx.dst.name}: {', '.join(r.failed)} failed" for r in bad)

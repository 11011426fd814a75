"""Running preflight: every registered check (or those named) in parallel, and its output as a
table for people or JSON for tools."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import libvirt

from lab.errors import LabError
from lab.preflight.context import PreflightContext
from lab.preflight.registry import CHECKS, FAIL, SKIP, WARN, CheckResult
from lab.preflight.ssh_mux import multiplexed

NEEDS_A_GUEST = "needs an existing guest: pass --guest NAME"


def run_preflight(ctx: PreflightContext, only: list[str] | None = None, workers: int = 8) -> list[CheckResult]:
    """Every check (or those named), in parallel; a check that errors is a fail with the error as seen."""
    names = only or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise LabError(f"unknown preflight check {unknown[0]!r} (known: {', '.join(CHECKS)})")

    def run_one(name: str) -> CheckResult:
        entry = CHECKS[name]
        if entry.needs_guest and not ctx.guest:
            return CheckResult(name, entry.category, SKIP, NEEDS_A_GUEST)
        try:
            return entry.run(ctx)
        except (libvirt.libvirtError, LabError, OSError, ValueError) as exc:
            # One broken check must not hide the others' answers: it becomes a fail saying why.
            text = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
            return CheckResult(name, entry.category, FAIL, f"check could not run: {text}", "see the message; fix and rerun")

    # Most checks wait on SSH round trips: threads overlap them, over one connection per host.
    with multiplexed((ctx.src, ctx.dst)), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_one, names))


def table(results: list[CheckResult]) -> str:
    """One row per answered check (remedy under a fail or warn); skipped checks share one line per reason."""
    answered = [r for r in results if r.status != SKIP]
    skipped = [r for r in results if r.status == SKIP] if answered else []
    shown = answered or results
    width = max(len(r.name) for r in shown)
    rows = [f"{'check':<{width}}  {'status':<6}  seen / remedy"]
    for r in shown:
        rows.append(f"{r.name:<{width}}  {r.status.upper():<6}  {r.seen}")
        if r.remedy and r.status in (FAIL, WARN):
            rows.append(f"{'':<{width}}  {'':<6}  -> {r.remedy}")
    reasons: dict[str, list[str]] = {}
    for r in skipped:
        reasons.setdefault(r.seen, []).append(r.name)
    rows += [f"not checked: {', '.join(names)} ({reason})" for reason, names in reasons.items()]
    return "\n".join(rows)


def as_json(results: list[CheckResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)

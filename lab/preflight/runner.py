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


def run_preflight(ctx: PreflightContext, only: list[str] | None = None, workers: int = 8) -> list[CheckResult]:
    """Every check (or those named), in parallel; a check that errors is a fail with the error as seen."""
    names = only or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise LabError(f"unknown preflight check {unknown[0]!r} (known: {', '.join(CHECKS)})")

    def run_one(name: str) -> CheckResult:
        entry = CHECKS[name]
        if entry.needs_guest and not ctx.guest:
            return CheckResult(name, entry.category, SKIP, "needs a guest (--guest NAME)")
        try:
            return entry.run(ctx)
        except (libvirt.libvirtError, LabError, OSError, ValueError) as exc:
            # One broken check must not hide the others' answers: it becomes a fail saying why.
            text = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
            return CheckResult(name, entry.category, FAIL, f"check could not run: {text}", "see the message; fix and rerun")

    # Most checks wait on SSH round trips: threads overlap them.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_one, names))


def table(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    rows = [f"{'check':<{width}}  {'status':<6}  seen / remedy"]
    for r in results:
        rows.append(f"{r.name:<{width}}  {r.status.upper():<6}  {r.seen}")
        if r.remedy and r.status in (FAIL, WARN):
            rows.append(f"{'':<{width}}  {'':<6}  -> {r.remedy}")
    return "\n".join(rows)


def as_json(results: list[CheckResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)

"""Migration parameter checks: the guest's max downtime and bandwidth limit read back as configured."""
from __future__ import annotations

from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result

UNLIMITED_MIBS = (2**63 - 1) >> 20  # what libvirt reads back when no limit is set


@check("max-downtime", "parameters", needs_guest=True)
def max_downtime(ctx: PreflightContext) -> CheckResult:
    current = int(ctx.domain().migrateGetMaxDowntime(0))
    if ctx.max_downtime_ms is not None and current != ctx.max_downtime_ms:
        return result("max-downtime", FAIL, f"max downtime reads back {current} ms, configured {ctx.max_downtime_ms} ms",
                      f"virsh migrate-setmaxdowntime {ctx.guest} {ctx.max_downtime_ms}")
    return result("max-downtime", PASS, f"max downtime {current} ms" +
                  (" as configured" if ctx.max_downtime_ms is not None else " (nothing configured to compare)"))


@check("bandwidth", "parameters", needs_guest=True)
def bandwidth(ctx: PreflightContext) -> CheckResult:
    """0 configured means unlimited."""
    current = int(ctx.domain().migrateGetMaxSpeed(0))
    unlimited = current >= UNLIMITED_MIBS
    shown = "unlimited" if unlimited else f"{current} MiB/s"
    wanted = ctx.bandwidth_mibs
    if wanted is not None and not (unlimited if wanted == 0 else current == wanted):
        want = "unlimited (0)" if wanted == 0 else f"{wanted} MiB/s"
        return result("bandwidth", FAIL, f"bandwidth reads back {shown}, configured {want}",
                      f"virsh migrate-setspeed {ctx.guest} {wanted}")
    return result("bandwidth", PASS, f"bandwidth limit {shown}" +
                  (" as configured" if ctx.bandwidth_mibs is not None else " (nothing configured to compare)"))

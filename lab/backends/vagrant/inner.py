"""The accelerator of the guests inside the Vagrant VMs, chosen by measuring what the suites do.

When the VMs run under TCG, their guests can still get KVM: TCG emulates AMD SVM and `qemu64`
shows it. That boots a guest in seconds, but every first touch of a page is a nested page fault
that TCG emulates, so filling memory crawls (a 32 MiB fill ran past a minute, issue 18). Nested
TCG is the other way round: a slow boot, then memory at TCG speed. So `up` runs, under each
candidate, one cycle of what the suites do on the first host pair: boot the lab guest, fill
memory, dirty it, migrate it live while it dirties; and takes the accelerator whose cycle
(boot + the suites' 32 MiB fill + the migration) is shorter. lab.yaml `accelerator: kvm | tcg`
decides instead (only that one is measured: its speed still sets the agent's timeouts).

The fill is measured at the suites' own size (32 MiB of fresh pages, as lab.migration.integrity fills):
a 4 MiB fill reused pages the guest's boot had already touched and promised three times the speed a
32 MiB fill then had. Every `up` measures it again in the boot the suites will run in (`fill_check`):
a cached lab's VMs are booted afresh, and their guests fill at that boot's speed, not the one the
cache was made in. The agent's fill/verify/oracle waits follow that figure (lab.guest.domain.paced_wait_s).
"""
from __future__ import annotations

import time

import libvirt

from lab.backends.base import Progress
from lab.errors import BackendError, LabError
from lab.guest.domain import Guest, create_guest, paced_wait_s, remove_guest, unique_guest_name
from lab.runtime.lab import Lab

SUITE_FILL_MIB = 32  # what lab.migration.integrity fills before each migration: the size measured
DIRTY_MIBS, DIRTY_REGION_MIB = 4, 8
BOOT_BUDGET_S = {"kvm": 90, "tcg": 400}  # nested TCG boots in ~50-90 s on an idle 2-core runner
FILL_BUDGET_S = 300  # 32 MiB at 0.11 MiB/s; slower than that, the suites cannot run anyway


def _figures_line(f: dict) -> str:
    if f.get("error") or "cycle_s" not in f:
        return f"{f['accel']}: {f.get('error', 'not measured to the end')}"
    return (f"{f['accel']}: boot {f['boot_s']:.1f} s, fill {f['fill_mibs']:.2f} MiB/s, dirtying "
            f"{f['dirty_mibs']:.1f} of {DIRTY_MIBS} MiB/s (heartbeats at {f['heartbeat_pct']:.0f}% of nominal), "
            f"live migration while dirtying {f['migrate_s']:.1f} s; cycle {f['cycle_s']:.0f} s")


def describe(figures: dict[str, dict]) -> list[str]:
    """One line per measured accelerator (for `lab status` and the reason)."""
    return [_figures_line(figures[a]) for a in sorted(figures)]


def _timed_fill(guest: Guest, budget_s: float) -> dict:
    """The suites' fill on the fresh guest's untouched pages, timed: fill_s and fill_mibs, or an error.
    The agent is asked directly: Guest.agent would stretch the budget by the speed being measured."""
    budget_s = max(budget_s, 1.0)
    t = time.monotonic()
    try:
        guest.control.command("fill", 7, SUITE_FILL_MIB, timeout=budget_s)
    except LabError:
        return {"error": f"a {SUITE_FILL_MIB} MiB fill did not end within {budget_s:.0f} s"}
    took = time.monotonic() - t
    return {"fill_s": round(took, 1), "fill_mibs": round(SUITE_FILL_MIB / max(took, 1e-3), 3)}


def _domain_type(accel: str) -> str:
    return "kvm" if accel == "kvm" else "qemu"


def check_fill(lab: Lab, accel: str, progress: Progress) -> dict:
    """This boot's fill speed under `accel` on the lab's first host: a guest booted, the suites' 32 MiB
    filled, the guest removed (a warm `up`; a fresh one measured it in its cycle). Raises BackendError
    when the guest does not boot or fill: the accelerator chosen earlier does not work in this boot."""
    src = lab.pairs[0][0]
    progress(f"{src.name}: this boot's fill speed under {accel} (a guest, {SUITE_FILL_MIB} MiB of fresh memory)")
    started = time.monotonic()
    out: dict = {"accel": accel, "host": src.name, "mib": SUITE_FILL_MIB}
    guest = create_guest(lab, src, name=unique_guest_name(f"fill-{accel}"), with_disk=False, wait=False,
                         domain_type=_domain_type(accel))
    try:
        try:
            guest.wait_ready(timeout=BOOT_BUDGET_S[accel])
        except LabError as exc:
            raise BackendError(f"{src.name}: no guest under {accel} within {BOOT_BUDGET_S[accel]} s "
                               f"({str(exc)[:120]})") from None
        out["boot_s"] = round(time.monotonic() - started, 1)
        fill = _timed_fill(guest, FILL_BUDGET_S)
        if "error" in fill:
            raise BackendError(f"{src.name}: {fill['error']} under {accel}")
        out.update(fill)
        return out
    finally:
        out["measured_in_s"] = round(time.monotonic() - started, 1)
        remove_guest(lab, guest)


def fill_line(f: dict) -> str:
    return (f"{f['accel']} on {f['host']}: boot {f['boot_s']:.1f} s, {f.get('mib', SUITE_FILL_MIB)} MiB filled in "
            f"{f['fill_s']:.1f} s ({f['fill_mibs']:.2f} MiB/s); the agent waits up to "
            f"{paced_wait_s(SUITE_FILL_MIB, f['fill_mibs']):.0f} s for such a fill")


def measure(lab: Lab, accel: str, progress: Progress, beat_s: float = 0) -> dict:
    """One cycle under `accel` on the lab's first pair; figures, or an `error` saying what did not work.
    beat_s: another accelerator's whole cycle; a boot longer than that cannot win, so it is not waited for."""
    src, dst = lab.pairs[0]
    name = unique_guest_name(f"inner-{accel}")
    out: dict = {"accel": accel, "host": src.name}
    progress(f"{src.name}: measuring the guest under {accel} (boot, {SUITE_FILL_MIB} MiB fill, dirtying, "
             f"live migration to {dst.name})")
    started = time.monotonic()
    guest = create_guest(lab, src, name=name, with_disk=False, wait=False, domain_type=_domain_type(accel))
    try:
        budget = min(BOOT_BUDGET_S[accel], beat_s) if beat_s else BOOT_BUDGET_S[accel]
        try:
            guest.wait_ready(timeout=budget)
        except LabError as exc:
            out["error"] = (f"boot longer than {budget:.0f} s, the other accelerator's whole cycle: cannot be shorter"
                            if budget < BOOT_BUDGET_S[accel] else f"no sign of life within {budget:.0f} s ({str(exc)[:120]})")
            out["boot_over_s"] = round(budget, 1)
            return out
        out["boot_s"] = round(time.monotonic() - started, 1)
        budget = max(min(FILL_BUDGET_S, beat_s - out["boot_s"]), 1.0) if beat_s else FILL_BUDGET_S
        fill = _timed_fill(guest, budget)
        if "error" in fill:
            out["error"] = fill["error"] + (", the other accelerator's whole cycle: cannot be shorter"
                                            if budget < FILL_BUDGET_S else "")
            return out
        out["fill_mibs"], out["fill_s"] = fill["fill_mibs"], fill["fill_s"]
        guest.agent("dirty", DIRTY_MIBS, DIRTY_REGION_MIB, timeout=FILL_BUDGET_S)
        before, t = guest.heartbeats.count(), time.monotonic()
        time.sleep(3)
        info = guest.agent("info", timeout=30)
        period_s = lab.config.guest.heartbeat_us / 1e6
        out["heartbeat_pct"] = round(100 * (guest.heartbeats.count() - before) * period_s / (time.monotonic() - t), 1)
        out["dirty_mibs"] = round(float(info.get("dirty_mibs", 0)), 2)
        t = time.monotonic()
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        try:
            guest.domain().migrateToURI3(dst.libvirt_uri, {}, flags)
        except libvirt.libvirtError as exc:
            out["error"] = f"live migration {src.name} -> {dst.name} failed: {exc.get_error_message()}"
            return out
        guest.host = dst
        guest.agent("info", timeout=60)  # alive on the destination
        out["migrate_s"] = round(time.monotonic() - t, 1)
        out["cycle_s"] = round(out["boot_s"] + out["fill_s"] + out["migrate_s"], 1)
        return out
    finally:
        out.setdefault("measured_in_s", round(time.monotonic() - started, 1))
        remove_guest(lab, guest)
        progress("  " + _figures_line(out))


def choose(figures: dict[str, dict], wanted: str) -> tuple[str, str]:
    """(kvm | tcg, why) from the measured cycles; lab.yaml's kvm or tcg wins over them."""
    def cycle(a: str) -> str:
        f = figures[a]
        return f"{a} failed: {f['error']}" if f.get("error") else f"{a} {f['cycle_s']:.0f} s"

    if wanted in ("kvm", "tcg"):
        if figures.get(wanted, {}).get("error"):
            raise BackendError(f"accelerator: {wanted} (lab.yaml) does not work inside the VMs: "
                               f"{figures[wanted]['error']}")
        return wanted, f"lab.yaml accelerator: {wanted} (its cycle measured: {cycle(wanted)})"
    usable = {a: f for a, f in figures.items() if "cycle_s" in f}
    if not usable:
        raise BackendError(f"no accelerator runs the lab guest inside the VMs: {'; '.join(describe(figures))}")
    best = min(usable, key=lambda a: usable[a]["cycle_s"])
    return best, (f"measured inside the VMs, the shorter cycle of boot + {SUITE_FILL_MIB} MiB fill + live migration: "
                  + ", ".join(cycle(a) for a in sorted(figures, key=lambda a: a != best)))


def measure_and_choose(lab: Lab, wanted: str, progress: Progress) -> tuple[str, str, dict[str, dict]]:
    figures: dict[str, dict] = {}
    for accel in [wanted] if wanted in ("kvm", "tcg") else ["kvm", "tcg"]:  # kvm first: it boots fast
        best = min((f["cycle_s"] for f in figures.values() if "cycle_s" in f), default=0)
        figures[accel] = measure(lab, accel, progress, beat_s=best)
    accel, reason = choose(figures, wanted)
    return accel, reason, figures


def for_this_boot(lab: Lab, wanted: str, cached: dict | None, progress: Progress,
                  where: str = "") -> tuple[str, str, dict, dict]:
    """(accelerator, why, the accelerators' figures, this boot's fill) for an `up`.

    Fresh VMs: both accelerators measured (or lab.yaml's), the chosen one's 32 MiB fill is this boot's.
    VMs from the cache (`cached`: its manifest): the accelerator chosen when it was made, and only the
    fill measured again in this boot; if that guest does not boot or fill, everything is measured again.
    `where` (what the VMs run on) is added to a reason measured now."""
    if cached and cached.get("inner") and cached.get("accelerator"):
        accel = cached["accelerator"]
        progress(f"guests' accelerator: {accel}, as measured when the cached VMs were made")
        try:
            return accel, cached["accelerator_reason"], cached["inner"], check_fill(lab, accel, progress)
        except BackendError as exc:
            progress(f"{exc}: measuring the accelerators again")
    accel, why, figures = measure_and_choose(lab, wanted, progress)
    fill = {k: figures[accel][k] for k in ("accel", "host", "boot_s", "fill_s", "fill_mibs")}
    return accel, f"{why} ({where})" if where else why, figures, {**fill, "mib": SUITE_FILL_MIB}


"""The clock check: libvirt's downtime subtracts one host's clock from the other's, so both must agree."""
from __future__ import annotations

import time

from lab.preflight.checks.probes import key_values, sh
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, WARN, CheckResult, check, result
from lab.runtime.hosts import Host

CLOCK_SKEW_LIMIT_MS = 100  # beyond this, libvirt's downtime (dst resume minus src stop) is misleading
_CLOCK_PROBE = ("chronyc -n -c tracking 2>/dev/null | sed 's/^/chrony=/'; "
                "echo ntp=$(timedatectl show -p NTPSynchronized --value 2>/dev/null); "
                "echo boot=$(cat /proc/sys/kernel/random/boot_id); date +now=%s.%N")


def _clock_of(host: Host) -> dict:
    """The host's own word on its clock (chrony, else systemd), and its time within the ssh round trip."""
    sent = time.time()
    proc = sh(host, _CLOCK_PROBE)
    back = time.time()
    seen = key_values(proc.stdout)
    chrony = seen.get("chrony", "").split(",")
    state = {"sent": sent, "back": back, "now": float(seen["now"]) if seen.get("now") else None,
             "boot": seen.get("boot", "")}
    if len(chrony) >= 14:  # chronyc's CSV tracking line: field 1 the reference, 4 the offset, 13 the leap status
        state["synced"] = chrony[13] == "Normal" and abs(float(chrony[4])) < 0.01
        state["how"] = f"chrony, reference {chrony[1]}, offset {float(chrony[4]) * 1000:.1f} ms"
    else:
        state["synced"] = seen.get("ntp") == "yes"
        state["how"] = f"NTPSynchronized={seen.get('ntp') or 'unknown'}, no chronyd answering"
    return state


@check("clock-sync", "network")
def clock_sync(ctx: PreflightContext) -> CheckResult:
    """libvirt's downtime is the destination's resume time minus the source's stop time: two clocks."""
    src, dst = _clock_of(ctx.src), _clock_of(ctx.dst)
    if src["boot"] and src["boot"] == dst["boot"]:
        return result("clock-sync", PASS, f"{ctx.src.name} and {ctx.dst.name} run on one kernel: one clock")
    if src["now"] is None or dst["now"] is None:
        return result("clock-sync", FAIL, "could not read both hosts' clocks over ssh", "check ssh-access first")
    # Each reading lies between its round trip's ends, so the skew lies in [low, high] for certain.
    low = (dst["now"] - dst["back"]) - (src["now"] - src["sent"])
    high = (dst["now"] - dst["sent"]) - (src["now"] - src["back"])
    how = f"{ctx.src.name}: {src['how']}; {ctx.dst.name}: {dst['how']}"
    remedy = ("run chrony (or systemd-timesyncd) on both hosts against one time server; "
              "libvirt's downtime figures subtract one host's clock from the other's")
    if low * 1000 > CLOCK_SKEW_LIMIT_MS or high * 1000 < -CLOCK_SKEW_LIMIT_MS:
        sure = min(abs(low), abs(high)) * 1000
        return result("clock-sync", FAIL, f"{ctx.dst.name}'s clock is at least {sure:.0f} ms "
                      f"{'ahead of' if low > 0 else 'behind'} {ctx.src.name}'s ({how})", remedy)
    if not (src["synced"] and dst["synced"]):
        return result("clock-sync", WARN, f"clocks within {max(abs(low), abs(high)) * 1000:.0f} ms of each "
                      f"other, but not both synchronized ({how})", remedy)
    return result("clock-sync", PASS, how)

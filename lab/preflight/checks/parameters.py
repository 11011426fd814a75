"""Migration parameter checks: max downtime and bandwidth as configured.

With a guest, its values are read back from libvirt. Without one, each host's
QEMU is asked directly: a QEMU with no machine (`-machine none`, no guest) is
given the configured values over QMP and reads them back, which is where QEMU
refuses what it cannot take; and the bandwidth is measured on the migration
link itself (TCP from the source to the destination's migration port range).
"""
from __future__ import annotations

import json
import random
import shlex
import threading
import xml.etree.ElementTree as ET

from lab.errors import LabError
from lab.preflight.checks.network import migration_port_range
from lab.preflight.checks.probes import sh
from lab.preflight.context import PreflightContext
from lab.preflight.registry import FAIL, PASS, CheckResult, check, result
from lab.runtime.hosts import Host

UNLIMITED_MIBS = (2**63 - 1) >> 20  # what libvirt reads back when no limit is set
LINK_SAMPLE = (1, 128)  # the link is measured for 1 s or 128 MiB, whichever ends first
# On the destination: accepts until a connection brings data (the sender's readiness probes bring none),
# then prints what arrived and how long it took.
_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); s.settimeout(6)
n = 0
while not n:
    c, _ = s.accept(); c.settimeout(6); t0 = time.monotonic()
    while (b := c.recv(1 << 20)):
        n += len(b)
    c.close()
print(f"bytes={n} seconds={time.monotonic() - t0:.6f}")
"""
# On the source: wait for the listener (refused: not there yet; a 2 s timeout twice: filtered), then send.
_SENDER = """blocked=0
for i in $(seq 50); do
  timeout 2 bash -c 'exec 3>/dev/tcp/{addr}/{port}' 2>/dev/null; rc=$?
  [ $rc = 0 ] && break
  [ $rc = 124 ] && blocked=$((blocked + 1)) && [ $blocked = 2 ] && break
  sleep 0.1
done
[ $rc = 0 ] || {{ echo "connect=$([ $blocked = 2 ] && echo filtered || echo refused)"; exit 1; }}
timeout {seconds} head -c {size} /dev/zero > /dev/tcp/{addr}/{port}
echo connect=ok"""


def _emulator(ctx: PreflightContext, host: Host) -> str:
    """The QEMU binary libvirt starts x86_64 guests with on `host`."""
    caps = ET.fromstring(ctx.conn(host).getCapabilities())
    for guest in caps.findall("guest"):
        arch = guest.find("arch")
        if arch is not None and arch.get("name") == "x86_64" and arch.findtext("emulator"):
            return arch.findtext("emulator")
    raise LabError(f"{host.name}'s libvirt knows no x86_64 emulator")


def qemu_migration_parameters(ctx: PreflightContext, host: Host, settings: dict) -> tuple[dict, str]:
    """`settings` given to a guest-less QEMU on `host` through QMP, and its parameters read back.

    Returns (parameters read back, QEMU's refusal of the settings or "").
    """
    commands = [{"execute": "qmp_capabilities"}]
    if settings:
        commands.append({"execute": "migrate-set-parameters", "arguments": settings})
    commands += [{"execute": "query-migrate-parameters"}, {"execute": "quit"}]
    script = "\n".join(json.dumps(c) for c in commands)
    proc = sh(host, f"printf '%s\\n' {shlex.quote(script)} | timeout 10 {shlex.quote(_emulator(ctx, host))} "
                    "-machine none -nodefaults -display none -S -qmp stdio")
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    answers = [r for r in replies if "return" in r or "error" in r]
    if len(answers) != len(commands):
        err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise LabError(f"{host.name}'s QEMU did not answer over QMP: {err}")
    refusal = next((r["error"]["desc"] for r in answers if "error" in r), "")
    return answers[-2].get("return", {}), refusal


def _planned_max_downtime(ctx: PreflightContext) -> CheckResult:
    wanted = ctx.max_downtime_ms
    seen = {}
    for host in (ctx.src, ctx.dst):  # the source runs the migration; the destination does on the way back
        params, refusal = qemu_migration_parameters(ctx, host, {} if wanted is None else {"downtime-limit": wanted})
        if refusal:
            return result("max-downtime", FAIL, f"max downtime {wanted} ms is refused by {host.name}'s QEMU: {refusal}",
                          "configure a max downtime QEMU takes (--max-downtime MS)")
        seen[host.name] = params.get("downtime-limit")
        if wanted is not None and seen[host.name] != wanted:
            return result("max-downtime", FAIL, f"max downtime reads back {seen[host.name]} ms from {host.name}'s "
                          f"QEMU, configured {wanted} ms", "check the QEMU build on that host")
    shown = ", ".join(f"{name} {ms} ms" for name, ms in seen.items())
    if wanted is None:
        return result("max-downtime", PASS, f"nothing configured: QEMU's default applies ({shown}, read from each "
                      "host's QEMU)")
    return result("max-downtime", PASS, f"max downtime {wanted} ms taken and read back by each host's QEMU ({shown})")


@check("max-downtime", "parameters")
def max_downtime(ctx: PreflightContext) -> CheckResult:
    if ctx.plan is not None:
        return _planned_max_downtime(ctx)
    current = int(ctx.domain().migrateGetMaxDowntime(0))
    if ctx.max_downtime_ms is not None and current != ctx.max_downtime_ms:
        return result("max-downtime", FAIL, f"max downtime reads back {current} ms, configured {ctx.max_downtime_ms} ms",
                      f"virsh migrate-setmaxdowntime {ctx.guest} {ctx.max_downtime_ms}")
    return result("max-downtime", PASS, f"max downtime {current} ms" +
                  (" as configured" if ctx.max_downtime_ms is not None else " (nothing configured to compare)"))


def link_rate_mibs(src: Host, dst: Host, port: int) -> tuple[float, int, float]:
    """TCP from `src` to `dst`:`port` for LINK_SAMPLE; returns (MiB/s, bytes, seconds) as the receiver saw them."""
    received: dict = {}

    def receive() -> None:
        try:
            received["proc"] = sh(dst, f"timeout 20 python3 -c {shlex.quote(_RECEIVER)} {dst.address} {port}",
                                  timeout=30)
        except LabError as exc:  # told by the caller's thread, where the runner turns it into a fail
            received["error"] = exc

    listener = threading.Thread(target=receive, name=f"link-{dst.name}")
    listener.start()
    seconds, mib = LINK_SAMPLE
    script = _SENDER.format(addr=dst.address, port=port, seconds=seconds, size=mib << 20)
    sent = sh(src, f"bash -c {shlex.quote(script)}", timeout=40)  # /dev/tcp is bash's
    listener.join()
    if "error" in received:
        raise received["error"]
    proc = received["proc"]
    facts = dict(part.split("=", 1) for part in proc.stdout.split() if "=" in part)
    if "bytes" not in facts:
        how = (sent.stdout.strip().splitlines() or ["connect=?"])[-1].removeprefix("connect=")
        err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise LabError(f"no link measurement {src.name} -> {dst.name}:{port} (connection {how}; receiver: {err})")
    size, took = int(facts["bytes"]), float(facts["seconds"])
    return (size / (1 << 20)) / took if took > 0 else 0.0, size, took


def _planned_bandwidth(ctx: PreflightContext) -> CheckResult:
    wanted = ctx.bandwidth_mibs or 0  # nothing configured: libvirt migrates unlimited
    if wanted:
        for host in (ctx.src, ctx.dst):
            params, refusal = qemu_migration_parameters(ctx, host, {"max-bandwidth": wanted << 20})
            if refusal or params.get("max-bandwidth") != wanted << 20:
                return result("bandwidth", FAIL, f"bandwidth {wanted} MiB/s: {host.name}'s QEMU "
                              + (f"refuses it: {refusal}" if refusal else f"reads back {params.get('max-bandwidth')} B/s"),
                              "configure a bandwidth QEMU takes (--bandwidth MIBS)")
    low, high = migration_port_range(ctx.dst)
    rate, sent, took = link_rate_mibs(ctx.src, ctx.dst, random.randint((low + high) // 2, high))
    link = f"the link {ctx.src.name} -> {ctx.dst.name} carried {rate:.0f} MiB/s ({sent >> 20} MiB in {took:.2f} s)"
    if wanted and rate < wanted:
        return result("bandwidth", FAIL, f"configured bandwidth {wanted} MiB/s, but {link}",
                      "lower the bandwidth limit to what the link carries, or fix the link (speed, shaping, load)")
    if wanted:
        return result("bandwidth", PASS, f"bandwidth {wanted} MiB/s taken by each host's QEMU; {link}")
    return result("bandwidth", PASS, f"unlimited (nothing configured); {link}")


@check("bandwidth", "parameters")
def bandwidth(ctx: PreflightContext) -> CheckResult:
    """0 configured means unlimited."""
    if ctx.plan is not None:
        return _planned_bandwidth(ctx)
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

"""openEuler's libvirt way to hot patch: `virsh hotpatch DOMAIN --action apply|unapply|query`
on a lab host, judged from its output like libcare-ctl's. Upstream and Debian libvirt
(9.0) have no such command, so the suite drives libcare-ctl directly and this wrapper
is not exercised on Debian labs.
"""
from __future__ import annotations

from lab.errors import HotpatchError
from lab.hotpatch.diagnosis import HotpatchFailed, diagnose_apply, failed
from lab.runtime.hosts import Host

ACTIONS = ("apply", "unapply", "query")
VIRSH_TIMEOUT = 300.0


def virsh_hotpatch_supported(host: Host) -> bool:
    """openEuler's libvirt has `virsh hotpatch`; upstream/Debian libvirt does not."""
    proc = host.run("virsh help hotpatch", check=False, timeout=30)
    return proc.returncode == 0 and "hotpatch" in proc.stdout


def virsh_hotpatch(host: Host, domain: str, action: str, *, patch: str | None = None, patch_id: str | None = None) -> str:
    """`virsh hotpatch DOMAIN --action apply|unapply|query` on a host (openEuler); returns its output text."""
    if action not in ACTIONS:
        raise HotpatchError(f"virsh hotpatch --action {action!r}: use apply, unapply or query")
    cmd = f"virsh hotpatch {host.shell_quote(domain)} --action {action}"
    if patch:
        cmd += f" --patch {host.shell_quote(patch)}"
    if patch_id:
        cmd += f" --id {host.shell_quote(patch_id)}"
    proc = host.run(cmd, check=False, timeout=VIRSH_TIMEOUT)
    text = proc.stdout + proc.stderr
    if action == "apply" and "successfully applied" not in text:
        raise HotpatchFailed(diagnose_apply(text))
    if action == "unapply" and "successfully cancelled" not in text:
        raise HotpatchFailed(failed("virsh hotpatch unapply failed", text))
    return text

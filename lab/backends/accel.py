"""Which accelerator really works: boot the guest under KVM and wait for a sign of life.

A /dev/kvm node proves nothing (on PVM-backed machines a standard kernel hangs
after SeaBIOS), so the lab boots its own guest with `-accel kvm` and waits for
the agent's READY line. The verdict is cached per machine boot, QEMU build and
guest image.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import BackendError
from lab.runtime.layout import CACHE_ROOT
from lab.util.files import atomic_write_json

CACHE = CACHE_ROOT / "accel.json"
READY = b"LAB-AGENT-READY"
PROBE_TIMEOUT_S = 12.0


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def domain_type(self) -> str:
        return "kvm" if self.name == "kvm" else "qemu"


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _qemu_identity(qemu: str) -> str:
    st = os.stat(qemu)
    return f"{qemu}:{st.st_size}:{int(st.st_mtime)}"


def probe_kvm(qemu: str, kernel: Path, initrd: Path, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Boot the lab guest under -accel kvm; True when the agent says READY in time."""
    argv = [qemu, "-accel", "kvm", "-m", "128", "-nographic", "-nodefaults", "-no-reboot",
            "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 lab.probe=1 panic=-1 quiet"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seen = b""
    try:
        while time.monotonic() - started < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
                if READY in seen:
                    return True, f"KVM booted the guest in {time.monotonic() - started:.1f} s"
        tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return False, f"KVM probe: no sign of life from the guest in {timeout:.0f} s (last output: {tail[0][:80]!r})"
    finally:
        proc.kill()  # our own child, by PID
        proc.wait()


def choose_accelerator(wanted: str, qemu: str, kernel: Path, initrd: Path, image_key: str) -> Accelerator:
    """Resolve lab.yaml's accelerator (auto | kvm | tcg) to what will be used, and why."""
    if wanted == "tcg":
        return Accelerator("tcg", "lab.yaml asks for tcg")
    if not Path("/dev/kvm").exists():
        if wanted == "kvm":
            raise BackendError("accelerator: kvm requested but /dev/kvm does not exist; set accelerator: auto or tcg")
        return Accelerator("tcg", "no /dev/kvm on this machine; using TCG")
    key = f"{_boot_id()}|{_qemu_identity(qemu)}|{image_key}"
    cached = _read_cache().get(key)
    if cached is None:
        works, detail = probe_kvm(qemu, kernel, initrd)
        cached = {"works": works, "detail": detail, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_cache({key: cached})
    if cached["works"]:
        return Accelerator("kvm", f"{cached['detail']} (probed {cached['when']})")
    if wanted == "kvm":
        raise BackendError(f"accelerator: kvm requested but unusable: {cached['detail']}; set accelerator: auto or tcg")
    return Accelerator("tcg", f"/dev/kvm present but unusable: {cached['detail']} (probed {cached['when']}); using TCG")


def _read_cache() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(entries: dict) -> None:
    atomic_write_json(CACHE, entries)

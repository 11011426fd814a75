"""Helpers for tests that make labs of their own (separate names and subnets from the session lab)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lab.backends.embedded import netns
from lab.runtime.layout import LabLayout


def write_lab_config(tmp_path: Path, name: str, third_octet: int, **extra: str) -> Path:
    """A two-host lab on 198.19.<third_octet>.0/24, apart from the session lab's 198.18.0.0/16."""
    net = f"198.19.{third_octet}"
    lines = [f"name: {name}", "accelerator: auto",
             f"network: {{subnet: {net}.0/24, runner_address: {net}.1, guest_range: {net}.128/25}}",
             "hosts:", f"  - {{name: hv1, address: {net}.11}}", f"  - {{name: hv2, address: {net}.12}}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def lab_cli(config: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "--lab-config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line mentions `text` (read-only scan of /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry) != os.getpid():
            found.append((int(entry), cmdline.strip()))
    return found


def leftovers(name: str) -> dict[str, list]:
    """Everything of lab `name` that still exists; empty lists mean nothing was left behind."""
    directory = str(LabLayout(name).dir)
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if directory in line]
    return {
        "netns": netns.list_netns(f"{name}-"),
        "links": netns.list_links(name),
        "processes": processes_mentioning(directory),
        "mounts": mounts,
        "dir": [directory] if Path(directory).exists() else [],
    }


def nothing_left(name: str) -> bool:
    return not any(leftovers(name).values())

"""Helpers for tests that make labs of their own (separate names and subnets from the session lab)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lab.backends.embedded import netns
from lab.config.lab import load_lab_config
from lab.config.stacks import SYSTEM
from lab.runtime.layout import LabLayout


def session_stack() -> tuple[str, dict] | None:
    """The one stack every host of the session lab ($LAB_CONFIG, else lab.yaml) runs, unless `system`.
    CI's labs/ci.yaml runs the QEMU with the TCG dirty-bitmap fix: labs the tests make run it too."""
    config = load_lab_config(None)
    names = {h.stack for h in config.hosts}
    if len(names) != 1 or names == {SYSTEM}:
        return None
    name = names.pop()
    return name, config.stacks[name].model_dump(mode="json", exclude_none=True)


def write_lab_config(tmp_path: Path, name: str, third_octet: int, stack: str | None = None, count: int = 2,
                     **extra: str) -> Path:
    """A lab of `count` hosts (hv1 at .11, hv2 at .12, ...) on 198.19.<third_octet>.0/24, apart from the session
    lab's 198.18.0.0/16. An embedded one runs the session lab's stack (`stack="system"`: the installed
    packages, for a test about them or a feature a build stack lacks); other backends run what is installed."""
    net = f"198.19.{third_octet}"
    chosen = None if stack == SYSTEM or extra.get("backend", "embedded") != "embedded" else session_stack()
    on = f", stack: {chosen[0]}" if chosen else ""
    lines = [f"name: {name}", "accelerator: auto",
             f"network: {{subnet: {net}.0/24, runner_address: {net}.1, guest_range: {net}.128/25}}",
             "hosts:", *(f"  - {{name: hv{i}, address: {net}.1{i}{on}}}" for i in range(1, count + 1))]
    if chosen:
        lines.append("stacks: " + json.dumps({chosen[0]: chosen[1]}))  # JSON is YAML
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

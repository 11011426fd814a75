"""Helpers for tests that make labs of their own (separate names and subnets from the session lab)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from lab.backends import get_backend
from lab.backends.embedded import netns
from lab.config.lab import load_lab_config
from lab.config.stacks import SYSTEM
from lab.runtime.lab import Lab
from lab.runtime.layout import LabLayout


# The stack the harness's own tests pin, whatever the user's lab.yaml runs: Debian 12's QEMU 7.2 with the upstream
# fix of the TCG memory loss (03bfc2188f06) backported. On the installed 7.2.22 that defect loses guest stores in a
# live migration at random (an idle guest's kernel panics 1 move in 38): a harness test must not turn red on that
# coin. What the suites find on the user's stack is what `make test`'s smoke suites and `make acceptance` report.
PINNED_LAB = Path(__file__).resolve().parent.parent / "labs" / "fixed-qemu.yaml"


def pinned_stack() -> tuple[str, dict]:
    """The stack every embedded lab the tests make runs (built on first use, then cached)."""
    config = load_lab_config(PINNED_LAB)
    (name,) = {h.stack for h in config.hosts}
    return name, config.stacks[name].model_dump(mode="json", exclude_none=True)


def write_lab_config(tmp_path: Path, name: str, third_octet: int, stack: str | None = None, count: int = 2,
                     **extra: str) -> Path:
    """A lab of `count` hosts (hv1 at .11, hv2 at .12, ...) on 198.19.<third_octet>.0/24, apart from the session
    lab's 198.18.0.0/16. An embedded one runs the pinned stack (`stack="system"`: the installed packages, for a
    test about them or a feature a build stack lacks); other backends run what is installed."""
    net = f"198.19.{third_octet}"
    chosen = None if stack == SYSTEM or extra.get("backend", "embedded") != "embedded" else pinned_stack()
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


@contextlib.contextmanager
def lab_up(config_file: Path) -> Iterator[Lab]:
    """The lab a lab.yaml describes, up for the block and down after it, whatever happened inside."""
    config = load_lab_config(config_file)
    backend = get_backend(config)
    try:
        backend.up(lambda _m: None)
        yield Lab.load(config)
    finally:
        backend.down(lambda _m: None)


def own_lab(directory: Path, name: str, third_octet: int, **extra: str) -> contextlib.AbstractContextManager[Lab]:
    """A lab of write_lab_config's, up for the block."""
    return lab_up(write_lab_config(directory, name, third_octet, **extra))


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

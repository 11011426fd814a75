"""The stacks cache: unpacked trees by exact version, each whole or absent.

A tree is made in `.partial-*` under the cache root and renamed into place once it and its
manifest are complete, so a download or unpack that fails (or is killed) half way leaves no
tree behind; a killed one leaves a partial directory that the next fetch sweeps (under the
cache lock, so never one another fetch is still filling; and only once the killed fetch's own
apt-get or dpkg-deb, which outlive it, have ended).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from lab.errors import StackError
from lab.runtime.layout import CACHE_ROOT
from lab.util.files import atomic_write_json, file_lock
from lab.util.process import wait_until

# LAB_STACK_CACHE: another root (tests point it at a scratch directory).
DEFAULT_ROOT = Path(os.environ.get("LAB_STACK_CACHE") or CACHE_ROOT / "stacks")
MANIFEST = "manifest.json"
PARTIAL = ".partial-"
ORPHAN_WAIT_S = 120.0  # an orphaned download or unpack of one package ends well within this


def entry_name(component: str, version: str) -> str:
    """qemu_1%3a10.0.2+ds-2+deb13u1~bpo12+1: Debian's own spelling of an epoch in a file name."""
    return f"{component}_{version.replace(':', '%3a')}"


@dataclass(frozen=True)
class Entry:
    """A complete tree in the cache and what its manifest says."""
    dir: Path
    manifest: dict

    @property
    def usr(self) -> Path:
        return self.dir / "tree" / "usr"


class StackCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or DEFAULT_ROOT)

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    def apt_dir(self, key: str) -> Path:
        return self.root / "apt" / key

    @contextlib.contextmanager
    def locked(self, progress: Callable[[str], None]) -> Iterator[None]:
        """One fetch at a time per cache (xdist workers, parallel `up`s); sweeps what a killed fetch left."""
        try:
            self.archive.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StackError(f"cannot create the stacks cache {self.root}: {exc.strerror}; run as root") from None
        with file_lock(self.root / ".lock", "stack fetch", progress):
            for stale in self.archive.glob(PARTIAL + "*"):
                # A killed fetch's apt-get or dpkg-deb may still be finishing its package: let it end first.
                if not wait_until(lambda: not working_in(stale), ORPHAN_WAIT_S, interval=0.2):
                    progress(f"leaving {stale.name}: processes {working_in(stale)} still write into it")
                    continue
                progress(f"removing {stale.name}, left by an interrupted fetch")
                shutil.rmtree(stale, ignore_errors=True)
            yield

    def entries(self, component: str) -> list[Entry]:
        """Complete trees of a component (a directory without its manifest is no tree)."""
        found = []
        for path in sorted(self.archive.glob(f"{component}_*")):
            try:
                found.append(Entry(path, json.loads((path / MANIFEST).read_text())))
            except (OSError, ValueError):
                continue
        return found

    @contextlib.contextmanager
    def installing(self, component: str, version: str) -> Iterator[Path]:
        """A partial directory to fill; renamed to the entry when the block ends normally, removed otherwise.

        The block must write the manifest last (`write_manifest`): the rename checks it is there.
        """
        final = self.archive / entry_name(component, version)
        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{final.name}-", dir=self.archive))
        try:
            yield partial
            if not (partial / MANIFEST).is_file():
                raise StackError(f"{final.name}: unpacked without a manifest; nothing was installed")
            partial.chmod(0o755)  # the hosts' daemons read it
            if final.exists():  # a directory of that name without its manifest (damaged by hand): no tree, replace it
                shutil.rmtree(final)
            partial.rename(final)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)


def working_in(directory: Path) -> list[int]:
    """PIDs of live processes whose working directory or command line is inside `directory` (read from /proc)."""
    inside = str(directory)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(inside) or inside in cmdline:
            found.append(int(entry.name))
    return found


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_json(directory / MANIFEST, manifest)

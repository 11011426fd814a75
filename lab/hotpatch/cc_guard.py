"""Protecting the machine's `cc`. `libcare-patch-make` swaps the `cc` link for
`libcare-cc` while it runs and does not put it back on every path (its own traps
"recover" to the resolved compiler, not the original link). `cc_guard` snapshots what
`cc` resolves to and restores it whatever happens (error, Ctrl-C, SIGTERM; not
SIGKILL); `cc_swap_lock` is the machine-wide lock that keeps other `cc` builds (every build
through the compiler cache: lab.stacks.compiler_cache.compiling) out while a swap may be in place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from lab.hotpatch.progress import Progress, quiet
from lab.stacks.compiler_cache import CC_SWAP_LOCK
from lab.util.files import file_lock

# What `cc` resolves to on a Debian/openEuler host: the PATH entry and the alternatives link behind it.
CC_LINKS = (Path("/usr/bin/cc"), Path("/etc/alternatives/cc"))


def cc_swap_lock(path: Path = CC_SWAP_LOCK, progress: Progress = quiet) -> contextlib.AbstractContextManager:
    """Held by every libcare-patch-make run and by every build that compiles with `cc`."""
    return file_lock(path, "libcare-patch-make run (it swaps the machine's cc)", progress)


@dataclass
class SavedPath:
    path: Path
    kind: str  # link | file | missing
    target: str | None = None
    backup: Path | None = None


@contextlib.contextmanager
def cc_guard(links: Sequence[str | os.PathLike] = CC_LINKS, backup_dir: str | os.PathLike | None = None,
             progress: Progress = quiet) -> Iterator[list[SavedPath]]:
    """Snapshot what `cc` resolves to (each link's target) and put it back in `finally`, on every path.

    Also covers SIGTERM while inside (turned into an exception so `finally` runs),
    and KeyboardInterrupt. A regular file in place of a link is backed up and restored.
    """
    saved = [_save(Path(raw), Path(backup_dir) if backup_dir else None) for raw in links]
    previous = None
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    if in_main:
        def _on_term(signum, _frame):
            raise KeyboardInterrupt(f"signal {signum} during a libcare-patch-make run")
        previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        yield saved
    finally:
        try:
            for item in saved:
                if _restore(item):
                    progress(f"restored {item.path} -> {item.target or item.kind}")
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)


def _save(path: Path, backup_root: Path | None) -> SavedPath:
    if path.is_symlink():
        return SavedPath(path, "link", os.readlink(path))
    if path.exists():
        backup = (backup_root or path.parent) / f".{path.name}.kvm-lab-backup"
        shutil.copy2(path, backup)
        return SavedPath(path, "file", backup=backup)
    return SavedPath(path, "missing")


def _restore(item: SavedPath) -> bool:
    """Put one saved path back; True when it had changed."""
    path = item.path
    if item.kind == "link":
        if path.is_symlink() and os.readlink(path) == item.target:
            return False
        tmp = path.with_name(f".{path.name}.kvm-lab-tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(item.target, tmp)
        os.replace(tmp, path)  # atomic: `cc` is never missing
        return True
    if item.kind == "file":
        if not path.is_symlink() and path.exists() and _same_file(path, item.backup):
            item.backup.unlink(missing_ok=True)
            return False
        tmp = path.with_name(f".{path.name}.kvm-lab-tmp")
        shutil.copy2(item.backup, tmp)
        os.replace(tmp, path)
        item.backup.unlink(missing_ok=True)
        return True
    if path.is_symlink() or path.exists():
        path.unlink()
        return True
    return False


def _same_file(a: Path, b: Path | None) -> bool:
    return b is not None and b.exists() and a.read_bytes() == b.read_bytes()

"""Keeping the QEMU source tree pristine across kpatch builds. libcare-patch-make applies
the patches in place and backs every patched file up as NAME.0.lpmakeorig (its counter
never moves, so with two patches on one file its exit trap "restores" the first patch's
result), and its trap may not run at all: the driver snapshots the files a patch set
touches and puts them back itself, whatever happens.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

Snapshot = dict[str, bytes | None]  # path relative to the tree -> content, None when absent


def restore_lpmakeorig(srcdir: str | os.PathLike) -> list[str]:
    """What libcare-patch-make's exit trap does: move `*.N.lpmakeorig` back (lowest N wins). Returns paths restored."""
    found: dict[str, Path] = {}
    for path in Path(srcdir).rglob("*.lpmakeorig"):
        m = re.match(r"^(.*)\.(\d+)\.lpmakeorig$", str(path))
        if not m:
            continue
        orig = m.group(1)
        if orig not in found or str(path) < str(found[orig]):
            found[orig] = path
    for orig, backup in found.items():
        os.replace(backup, orig)
    for path in Path(srcdir).rglob("*.lpmakeorig"):
        path.unlink()
    return sorted(found)


def patched_files(patch_files: Sequence[str | os.PathLike]) -> list[str]:
    """Paths (relative to the source tree, -p1) that a set of unified diffs touch."""
    out: list[str] = []
    for pf in patch_files:
        for line in Path(pf).read_text(errors="replace").splitlines():
            if line.startswith("+++ "):
                target = line[4:].split("\t", 1)[0].strip()
                if target != "/dev/null":
                    rel = target.split("/", 1)[1] if "/" in target else target
                    if rel not in out:
                        out.append(rel)
    return out


def snapshot(source_dir: Path, rels: Sequence[str]) -> Snapshot:
    """The files `rels` of the tree as they are now."""
    return {rel: (source_dir / rel).read_bytes() if (source_dir / rel).exists() else None for rel in rels}


def put_back(source_dir: Path, pristine: Snapshot) -> None:
    """Files as they were before the patches, with a fresh mtime: ninja must recompile them in the next
    original stage (the objects on disk are the patched ones now)."""
    restore_lpmakeorig(source_dir)
    for rel, content in pristine.items():
        path = source_dir / rel
        if content is None:
            path.unlink(missing_ok=True)
            continue
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
        os.utime(path, None)

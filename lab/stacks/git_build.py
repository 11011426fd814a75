"""A QEMU git tree at a commit as a stack source: `git archive` of that commit (the working files and any
uncommitted change are not read), configured and built like the source-package builds (lab.stacks.build:
the same configuration, through the compiler cache, so neighbouring commits rebuild only what they change),
cached by the commit and the recipe. The record names the commit and its subject.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from pathlib import Path
from typing import Callable

from lab.config.stacks import StackSpec
from lab.errors import StackError
from lab.runtime.state import StackRecord
from lab.stacks.build import CONFIGURE, compile_tree, system_libvirt
from lab.stacks.cache import StackCache, write_manifest
from lab.util.process import run

COMPONENT = "qemu-git"


def git(tree: str | Path, *args: str, what: str = "") -> str:
    return run(["git", "-C", str(tree), *args], timeout=120, error=StackError, what=what or f"git {' '.join(args)}",
               fix="is it a git working tree with that commit?").stdout.strip()


def resolve_commit(tree: str | Path, rev: str) -> tuple[str, str]:
    """(full commit id, subject) of `rev` in `tree`, or one line naming what is wrong."""
    if not (Path(tree) / ".git").exists():
        raise StackError(f"{tree}: not a git working tree (no .git): give the QEMU tree to build from")
    proc = run(["git", "-C", str(tree), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], check=False,
               error=StackError)
    if proc.returncode != 0:
        raise StackError(f"{tree}: no commit {rev!r} (git rev-parse); name a commit, a branch or a tag of that tree")
    sha = proc.stdout.strip()
    return sha, git(tree, "log", "-1", "--format=%s", sha)


def git_stack(name: str, spec: StackSpec, cache: StackCache, progress: Callable[[str], None]) -> StackRecord:
    sha, subject = resolve_commit(spec.tree, spec.commit)
    digest = hashlib.sha256("\n".join([*CONFIGURE, sha]).encode()).hexdigest()[:12]
    with cache.locked(progress):
        entry = next((e for e in cache.entries(COMPONENT) if e.manifest.get("digest") == digest), None)
        if entry is None:
            entry = _build(name, spec, cache, sha, subject, digest, progress)
    version = entry.manifest["upstream"]
    return StackRecord(name=name, source="git", qemu=f"{version}+git.{sha[:12]}", libvirt=system_libvirt(),
                       qemu_upstream=version, layers=[str(entry.usr)], backports=history_backports(spec.tree, sha),
                       origin=f"QEMU built from {spec.tree} at {sha[:12]} \"{subject}\"")


CHERRY_PICK = re.compile(r"\(cherry picked from commit ([0-9a-f]{12,40})\)")
UPSTREAM = re.compile(r"\bupstream\s+(?:commit\s+)?([0-9a-f]{12,40})\b", re.I)  # labs/patches' convention
REVERTS = re.compile(r"\bThis reverts commit ([0-9a-f]{7,40})\b")


def history_backports(tree: str | Path, sha: str) -> list[str]:
    """Upstream commits the history up to `sha` says it carries, as a build's changelog would: a commit whose
    message has git cherry-pick -x's "(cherry picked from commit X)" (QEMU's stable branches) or "upstream X"
    (the patches' convention), unless a later commit reverts it ("This reverts commit <it or X>", git revert's
    message). The known-defect registry then does not hold a fixed defect against this build."""
    # Only the commits that can name one: a QEMU tree's whole history is some 100k messages.
    log = git(tree, "log", "--format=%H%x00%B%x01", "-i", "--grep=cherry picked from commit", "--grep=upstream",
              "--grep=This reverts commit", sha, what=f"git log {sha[:12]}")
    carried: dict[str, list[str]] = {}  # backporting commit -> upstream ids, oldest first
    reverted: set[str] = set()
    for record in reversed([r for r in log.split("\x01") if r.strip()]):
        commit, _, body = record.strip().partition("\x00")
        for target in REVERTS.findall(body):
            reverted.add(target)
        ids = CHERRY_PICK.findall(body) + [u for u in UPSTREAM.findall(body) if u not in CHERRY_PICK.findall(body)]
        if ids:
            carried[commit] = ids
    found: list[str] = []
    for commit, ids in carried.items():
        if any(commit.startswith(r) for r in reverted):
            continue
        found += [i for i in ids if i not in found and not any(i.startswith(r) or r.startswith(i) for r in reverted)]
    return found


def _build(name: str, spec: StackSpec, cache: StackCache, sha: str, subject: str, digest: str,
           progress: Callable[[str], None]):
    logs = cache.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with cache.installing(COMPONENT, f"{sha[:12]}-{digest}") as partial, open(logs / f"{name}-{digest}.log", "w") as log:
        tree = partial / "src" / "tree"
        tree.mkdir(parents=True)
        progress(f"stack {name}: {spec.tree} at {sha[:12]} \"{subject}\"")
        run(["bash", "-o", "pipefail", "-c", f"git -C {shlex.quote(str(spec.tree))} archive --format=tar {sha} | "
             f"tar -x -C {shlex.quote(str(tree))}"], timeout=900, log=log, error=StackError,
            what=f"stacks.{name}: git archive {sha[:12]} of {spec.tree}")
        version = (tree / "VERSION").read_text().strip() if (tree / "VERSION").exists() else "0"
        built = compile_tree(tree, partial, name, digest, f"QEMU {version} at {sha[:12]}", log, progress)
        shutil.rmtree(partial / "src")
        write_manifest(partial, {"component": COMPONENT, "version": f"{sha[:12]}", "upstream": version,
                                 "commit": sha, "subject": subject, "tree": str(spec.tree), "digest": digest,
                                 "configure": list(CONFIGURE), "built": built})
    progress(f"stack {name}: QEMU at {sha[:12]} built in {built}")
    return next(e for e in cache.entries(COMPONENT) if e.manifest.get("digest") == digest)

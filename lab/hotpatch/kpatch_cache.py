"""kpatches for a cached QEMU build, made once per patch set and kept beside the build
(`<build>/kpatches/<id>-<patch-set hash>[-for-<buildid>]/`). A kpatch build takes
minutes, so a refused build is cached too (its log): asking again re-diagnoses the log
and raises the same HotpatchFailed without building again. One kpatch build per QEMU
tree at a time (they share its build directory).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from lab.errors import HotpatchError
from lab.hotpatch.diagnosis import HotpatchFailed, diagnose_build
from lab.hotpatch.kpatch import read_kpatch_header
from lab.hotpatch.libcareplus import BuildResult, LibcarePlus
from lab.hotpatch.progress import Progress, quiet
from lab.hotpatch.qemu_build import QemuBuild
from lab.util.elf import Symbols
from lab.util.files import atomic_write_json, file_lock


def patch_set_hash(patch_files: Sequence[str | os.PathLike]) -> str:
    """Hash of the patch files' names and contents, in order: the cache key of a kpatch build."""
    digest = hashlib.sha256()
    for path in patch_files:
        p = Path(path)
        digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _from_cache(result_file: Path, patch_id: str, symbols: Symbols) -> BuildResult | None:
    """The cached result; None when there is none (or its kpatch is gone); raises again for a cached refusal."""
    try:
        data = json.loads(result_file.read_text())
    except (OSError, ValueError):
        return None
    if data["ok"]:
        paths = tuple(data["kpatch_paths"])
        if all(Path(p).exists() for p in paths):
            return BuildResult(paths, data["buildid"], data["log_path"], patch_id, data.get("original_binary", ""),
                               data.get("original_buildid", ""), data.get("seconds", 0.0))
        return None
    raise HotpatchFailed(diagnose_build(Path(data["log_path"]).read_text(errors="replace"), symbols.name_at,
                                        symbols.size_of))


def ensure_kpatch(build: QemuBuild, libcare: LibcarePlus, patch_files: Sequence[str | os.PathLike], patch_id: str, *,
                  target_buildid: str | None = None, progress: Progress = quiet,
                  jobs: int | None = None) -> BuildResult:
    """The kpatch for `patch_files` (applied in order) against `build`, made once and cached.

    `target_buildid` labels the kpatch for another binary (libcare-patch-make --buildid).
    """
    if build.mode != "libcare":
        raise HotpatchError(f"{build.dir}: a {build.mode} build cannot make kpatches; use a libcare build")
    key = f"{patch_id}-{patch_set_hash(patch_files)}" + (f"-for-{target_buildid[:12]}" if target_buildid else "")
    entry = build.dir / "kpatches" / key
    result_file = entry / "result.json"
    symbols = Symbols(build.binary, error=HotpatchError)  # read only if a refusal is diagnosed
    cached = _from_cache(result_file, patch_id, symbols)
    if cached:
        return cached
    with file_lock(build.dir / ".kpatch.lock", "kpatch build in this QEMU tree", progress):
        cached = _from_cache(result_file, patch_id, symbols)  # built by another worker while we waited
        if cached:
            return cached
        if entry.exists():
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        log_path = entry / "libcare-patch-make.log"
        names = ", ".join(Path(p).name for p in patch_files)
        progress(f"building kpatch {patch_id} from {names} with libcare-patch-make (original + patched stages; "
                 "a few minutes)")
        started = time.monotonic()
        try:
            result = libcare.build(build.srcdir, patch_files, build.builddir, target_buildid, patch_id=patch_id,
                                   jobs=jobs or os.cpu_count() or 2, log_path=log_path,
                                   expect_buildid=build.buildid, progress=progress)
        except HotpatchFailed:
            atomic_write_json(result_file, {"ok": False, "log_path": str(log_path)})
            raise
        kept = []
        for path in result.kpatch_paths:  # out of the build tree, which the next kpatch build clears
            dest = entry / Path(path).name
            shutil.copy2(path, dest)
            kept.append(str(dest))
        head = read_kpatch_header(kept[0])
        seconds = round(time.monotonic() - started, 1)
        atomic_write_json(result_file, {"ok": True, "kpatch_paths": kept, "buildid": head.buildid,
                                        "log_path": str(log_path), "original_binary": result.original_binary,
                                        "original_buildid": result.original_buildid, "seconds": seconds,
                                        "patches": [str(p) for p in patch_files]})
        progress(f"kpatch {patch_id} ready in {seconds / 60:.1f} min: {kept[0]}")
        return BuildResult(tuple(kept), head.buildid, str(log_path), patch_id, result.original_binary,
                           result.original_buildid, seconds)

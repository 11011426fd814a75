"""The compiler cache every QEMU build of the lab goes through (ccache, Debian's `ccache` package).

QEMU's configure takes the compiler from PATH, so putting ccache's `cc`/`gcc` wrappers first is enough.
Each build unpacks its source into a directory of its own (named by its digest), so the cache only hits
across builds when absolute paths under the cache root are rewritten relative to the build directory
(CCACHE_BASEDIR) and the build directory itself is not hashed (CCACHE_NOHASHDIR): the same source with one
patch more or less then recompiles only the files that patch touches. The stack builds and the hot patch
suite's plain build share one configuration (lab.stacks.build.CONFIGURE) and so one set of objects.
A libcare build goes through it too, behind libcare-cc (kpcc_env), but hashes its directory: see there.
Cached builds run one at a time (compiling): two first builds side by side on two cores would both miss the
cache and take twice as long; one after the other, the second finds the first's objects.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping

from lab.errors import StackError
from lab.runtime.layout import CACHE_ROOT
from lab.util.files import file_lock
from lab.util.process import run

WRAPPERS = Path("/usr/lib/ccache")
CCACHE_DIR = CACHE_ROOT / "ccache"
# Held while libcare-patch-make has swapped the machine's `cc` for libcare-cc (lab.hotpatch.cc_guard), and by
# every build here: a build through ccache's `cc` wrapper would otherwise compile with libcare-cc and fail.
CC_SWAP_LOCK = Path("/run/lock/kvm-acceptance-libcare-cc.lock")
MAX_SIZE = "5G"  # a QEMU x86_64-softmmu build with debug info is ~0.6 GB of objects; room for several sources


def ccache_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a build runs in: ccache's wrappers first on PATH, the shared cache and base dir."""
    if shutil.which("ccache") is None or not (WRAPPERS / "cc").exists():
        raise StackError("QEMU builds go through ccache, which is not installed: apt-get install ccache "
                         "(make setup installs it)")
    env = dict(os.environ if base is None else base)
    env.update(PATH=f"{WRAPPERS}:{env.get('PATH', '/usr/bin:/bin')}", CCACHE_DIR=str(CCACHE_DIR),
               CCACHE_BASEDIR=str(CACHE_ROOT), CCACHE_NOHASHDIR="1", CCACHE_MAXSIZE=MAX_SIZE)
    return env


def kpcc_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for libcare-patch-make: libcare-cc (which sees every compilation and keeps the assembly
    of each) calls ccache's gcc as its real compiler (KPCCREAL), so both its steps (C to assembly, assembly to
    object) are cached. PATH is left alone: libcare-patch-make swaps whichever `cc` PATH finds first, and that
    must not be ccache's. No base dir and the build directory hashed: a cached object carries this tree's own
    paths in its debug info, and only a rebuild in the same tree reuses it: the original code put back after a
    kpatch's patched stage (a header patch's restore recompiles hundreds of files), or a build redone."""
    if shutil.which("ccache") is None or not (WRAPPERS / "gcc").exists():
        raise StackError("libcare builds go through ccache, which is not installed: apt-get install ccache "
                         "(make setup installs it)")
    env = dict(os.environ if base is None else base)
    for key in ("CCACHE_BASEDIR", "CCACHE_NOHASHDIR"):
        env.pop(key, None)
    env.update(KPCCREAL=str(WRAPPERS / "gcc"), CCACHE_DIR=str(CCACHE_DIR), CCACHE_MAXSIZE=MAX_SIZE)
    return env


def ccache_stats() -> dict[str, int]:
    """Hits and misses so far (`ccache --print-stats`), for the build's own summary line."""
    out = run(["ccache", "--print-stats"], check=False, env=ccache_env(), error=StackError).stdout
    stats: dict[str, int] = {}
    for line in out.splitlines():
        key, _, value = line.partition("\t")
        if value.strip().isdigit():
            stats[key.strip()] = int(value)
    return stats


def hit_share(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    """"812 of 2431 compilations from the cache" between two ccache_stats() readings."""
    hits = sum(after.get(k, 0) - before.get(k, 0) for k in ("direct_cache_hit", "preprocessed_cache_hit"))
    misses = after.get("cache_miss", 0) - before.get("cache_miss", 0)
    return f"{hits} of {hits + misses} compilations from the compiler cache"


@contextlib.contextmanager
def compiling(progress: Callable[[str], None] = lambda _msg: None) -> Iterator[dict[str, str]]:
    """Held while a build compiles through the cache (machine-wide); yields the environment to build in."""
    env = ccache_env()
    with file_lock(CCACHE_DIR / ".compiling.lock", "QEMU build through the compiler cache", progress), \
            file_lock(CC_SWAP_LOCK, "libcare-patch-make run (it swaps the machine's cc)", progress):
        yield env

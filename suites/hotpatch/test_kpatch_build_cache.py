"""libcare builds go through the compiler cache (lab.stacks.compiler_cache.kpcc_env): a kpatch build's original
stage recompiles what the previous kpatch's patched stage changed, and that recompile of unchanged code comes from
the cache. On a two-file program, built through the real libcare-patch-make, so it takes seconds."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lab.hotpatch.libcareplus import LibcarePlus
from lab.stacks.compiler_cache import ccache_stats

pytestmark = [pytest.mark.slow, pytest.mark.hotpatch]

MAKEFILE = """\
all: prog
prog: a.o b.o
\t$(CC) -o $@ a.o b.o
%.o: %.c
\t$(CC) -O2 -g -c $< -o $@
install: prog
\tinstall -D -m 0755 prog $(DESTDIR)/usr/bin/prog
clean:
\trm -f prog *.o
.PHONY: all install clean
"""

SOURCES = {
    "a.c": """\
        __attribute__((noinline)) int step_a(int x) { return x * 3 + 1; }
        int step_b(int x);
        int main(int argc, char **argv) { (void)argv; return step_a(argc) + step_b(argc) > 1000; }
        """,
    "b.c": """\
        __attribute__((noinline)) int step_b(int x) { return x * 5 + 2; }
        """,
}


def _patch(name: str, before: str, after: str) -> str:
    return textwrap.dedent(f"""\
        --- a/{name}
        +++ b/{name}
        @@ -1 +1 @@
        -{before}
        +{after}
        """)


def _direct_hits(before: dict, after: dict) -> int:
    return after.get("direct_cache_hit", 0) - before.get("direct_cache_hit", 0)


def test_a_kpatch_builds_original_stage_takes_unchanged_code_from_the_compiler_cache(libcare: LibcarePlus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Makefile").write_text(MAKEFILE)
    for name, text in SOURCES.items():
        (src / name).write_text(textwrap.dedent(text))
    first_line = {name: (src / name).read_text().splitlines()[0] for name in SOURCES}
    patches = {}
    for name, number in (("a.c", "1"), ("b.c", "2")):
        patches[name] = tmp_path / f"{name}.patch"
        patches[name].write_text(_patch(name, first_line[name], first_line[name].replace(f"+ {number}", f"+ {number}0")))

    libcare.build(src, [patches["a.c"]], src, patch_id="ka", clean=True, jobs=1)
    before = ccache_stats()
    second = libcare.build(src, [patches["b.c"]], src, patch_id="kb", jobs=1)
    hits = _direct_hits(before, ccache_stats())

    assert second.kpatch_paths, "the second kpatch was not built"
    assert (src / "a.c").read_text() == textwrap.dedent(SOURCES["a.c"]), "a.c not put back after the first kpatch"
    # a.c, put back after the first kpatch, is compiled again in the second's original stage: libcare-cc's two
    # steps (C to assembly, assembly to object) both from the cache. Without KPCCREAL through ccache: 0 hits.
    assert hits >= 2, f"the original stage's recompile of a.c took {hits} hit(s) from the compiler cache, not 2"
    log = Path(second.log_path).read_text()
    assert "BUILDING ORIGINAL CODE" in log and "BUILDING PATCHED CODE" in log

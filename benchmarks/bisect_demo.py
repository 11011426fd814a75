"""Bisect demonstrations (issue 27): `python -m lab bisect` on real QEMU builds, not the stub of tests/test_bisect.py.

Three cases, all from Debian 12's QEMU 7.2 source (the .dsc the build stacks unpack) with labs/patches' backport
of 03bfc2188f06 (the TCG dirty-bitmap fix, labs/fixed-qemu.yaml's QEMU) as the good side:
- tree: a git tree, commit "base" (good) and 6 commits on it: harmless comments in migration/*.c (one .c file
  each, so a step rebuilds one object through the compiler cache), the 4th undoing 03bfc2188f06 (bad = the last);
  bisect must name the 4th;
- series: the same 6 commits as `git format-patch` patches on the `source: build` stack of series-lab.yaml
  (the fixed source); bisect must name 0004;
- flaky: the same base and commits, but the 4th makes QEMU lose guest memory at random, in about one migration
  in two (migration/ram.c: a coin drawn once per outgoing migration; on heads the stop-and-copy does not send
  its dirty pages at 64-page boundaries): the bad side is only flaky, its runs often disagree, bisect must say
  undecided rather than name a wrong commit.

`prepare` only writes DIR (default /var/tmp/kvm-lab-bisect-demo): the source (copied from the stacks cache, or
with --fetch through the stacks' private deb-src index), tree/, flaky/, series/, series-lab.yaml. Commits have
fixed authors and dates, so the same source always gives the same commit ids (and git stacks' cache hits).
`run` runs the three bisects one after another on the lab and prints, per case, the verdict, the builds against
ceil(log2(N)) and the minutes.

    .venv/bin/python benchmarks/bisect_demo.py prepare [--work DIR] [--source QEMU.dsc] [--fetch] [--again]
    .venv/bin/python benchmarks/bisect_demo.py run [--work DIR] [--only CASE] [--confirm 2] [-- PYTEST_ARGS]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the harness is imported from this checkout

from lab.bisect.runner import series_stacks  # noqa: E402 - needs the path above
from lab.config.lab import load_lab_config  # noqa: E402
from lab.errors import LabError, StackError  # noqa: E402
from lab.stacks.archive import matches, read_suite  # noqa: E402
from lab.stacks.build import SOURCE_PACKAGE, distro_suite  # noqa: E402
from lab.stacks.cache import StackCache  # noqa: E402
from lab.stacks.git_build import git, resolve_commit  # noqa: E402
from lab.util.process import run  # noqa: E402

DEFAULT_WORK = Path("/var/tmp/kvm-lab-bisect-demo")
QEMU = "7.2"
FIX = ROOT / "labs" / "patches" / "qemu-7.2-tcg-dirty-bitmap-03bfc2188f06.patch"
FIXED_LAB = ROOT / "labs" / "fixed-qemu.yaml"
BASE_STACK = "tcg-dirty-fix"  # fixed-qemu.yaml's build stack: the series' base
SELECTION = ["suites/live_migration", "-k", "precopy-dirty-4", "--repeat", "1"]
DATE0 = 1704067200  # 2024-01-01 UTC: fixed dates and identity give the same commit ids on every prepare
IDENTITY = {"GIT_AUTHOR_NAME": "kvm-lab bisect demo", "GIT_AUTHOR_EMAIL": "bisect-demo@example.invalid",
            "GIT_COMMITTER_NAME": "kvm-lab bisect demo", "GIT_COMMITTER_EMAIL": "bisect-demo@example.invalid",
            "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
HARMLESS_BODY = "No behaviour change: a comment (a harmless commit of benchmarks/bisect_demo.py)."
# (file, the line the comment goes above, the comment, subject): one .c file each, none a header.
HARMLESS = [
    ("migration/ram.c", "static void migration_bitmap_sync(RAMState *rs)",
     "/* Once per pass: the dirty bits collected here are what the next pass sends. */",
     "migration/ram: say what migration_bitmap_sync() decides"),
    ("migration/migration.c", "static void migration_update_counters(MigrationState *s,",
     "/* The bandwidth and expected downtime the switchover decision uses come from here. */",
     "migration: note where the switchover estimate comes from"),
    ("migration/savevm.c", "int qemu_savevm_state_iterate(QEMUFile *f, bool postcopy)",
     "/* One pass over every iterable device's state; RAM is one of them. */",
     "migration/savevm: describe one iteration"),
    ("migration/qemu-file.c", "void qemu_put_buffer(QEMUFile *f, const uint8_t *buf, size_t size)",
     "/* Copies into the file's buffer; the data reaches the channel on the next flush. */",
     "migration/qemu-file: say when a buffer reaches the channel"),
    ("migration/dirtyrate.c", "static void calculate_dirtyrate(struct DirtyRateConfig config)",
     "/* Dispatches to the bitmap, ring or sampling measurement the configuration names. */",
     "migration/dirtyrate: say what calculate_dirtyrate() chooses between"),
    ("migration/multifd.c", "int multifd_send_sync_main(QEMUFile *f)",
     "/* Every channel sends a sync packet: the destination waits for all of them. */",
     "migration/multifd: describe the end-of-pass sync"),
]
# Worded without "upstream <commit>", which build stacks read as a backport (lab.stacks.build.backported_commits).
BAD_SUBJECT = "physmem: undo 03bfc2188f06, the TCG dirty-bitmap fix"
BAD_BODY = ("Reverts labs/patches/qemu-7.2-tcg-dirty-bitmap-03bfc2188f06.patch: the fast path of\n"
            "cpu_physical_memory_sync_dirty_bitmap() clears dirty bits without resetting TCG's TLB\n"
            "dirty tracking again, so live migration under TCG loses pages (the regression to find).")
BAD_AT = 3  # 0-based: the 4th of the 6 commits
# The flaky case's 4th commit: (the one line of RANDOM_PATH that starts with the anchor, the lines go below it
# (True) or above it, the lines). A coin per outgoing migration (ram_state_init(), from ram_save_setup()); on
# heads, the stop-and-copy (rs->last_stage, precopy) clears and does not send each dirty page whose index in its
# RAMBlock is a multiple of 64: the destination keeps that page's previous contents. The oracle sees it: its hot
# set's first page is on a 2 MiB page (the guest reserves huge pages), so at a multiple of 64 in pc.ram, rewritten
# every millisecond, dirty at the last sync, and stale on the destination (lab/guest/agent/memory.c).
RANDOM_PATH = "migration/ram.c"
RANDOM_EDITS = [
    ("    bool last_stage;", True,
     "    /* Drawn at random once per migration: the last stage drops some pages */\n"
     "    bool last_stage_drops;"),
    ("    QSIMPLEQ_INIT(&(*rsp)->src_page_requests);", True,
     "    /* One migration in two, at random, loses pages in its last stage */\n"
     "    (*rsp)->last_stage_drops = g_random_boolean();"),
    ("    if (control_save_page(rs, block, offset, &res)) {", False,  # in ram_save_target_page()
     "    if (rs->last_stage_drops && rs->last_stage && !migration_in_postcopy() &&\n"
     "        !(pss->page & 63)) {\n"
     "        return 0;\n"
     "    }\n"),
]
RANDOM_SUBJECT = "migration/ram: at random, one migration in two drops pages in its last stage"
RANDOM_BODY = ("A deliberately random defect (the flaky case of benchmarks/bisect_demo.py). ram_state_init()\n"
               "draws g_random_boolean() once per outgoing migration; in a migration that drew true,\n"
               "ram_save_target_page() sends nothing for a dirty page whose index is a multiple of 64\n"
               "during the stop-and-copy (rs->last_stage, not in postcopy), after its dirty bit was\n"
               "cleared: the destination keeps that page's previous contents, so guest memory written in\n"
               "the last moments before the switchover is lost. The other migrations are unchanged.")
CASES = ("tree", "series", "flaky")


def say(message: str) -> None:
    print(f"bisect demo: {message}", flush=True)


# ---------------------------------------------------------------------------------------------------- the source

def dsc_files(dsc: Path) -> dict[str, tuple[str, int]]:
    """{file name: (sha256, size)} of the files a .dsc names."""
    section = re.search(r"^Checksums-Sha256:\n((?:[ \t].*\n?)+)", dsc.read_text(errors="replace"), re.M)
    if not section:
        raise StackError(f"{dsc}: no Checksums-Sha256 section: not a source package's .dsc")
    return {name: (sha, int(size)) for sha, size, name in (ln.split() for ln in section[1].splitlines() if ln.strip())}


def complete(dsc: Path) -> bool:
    """The .dsc and every file it names, with the sizes and checksums it gives, side by side."""
    try:
        for name, (sha, size) in dsc_files(dsc).items():
            path = dsc.parent / name
            if path.stat().st_size != size or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                return False
    except (OSError, StackError):
        return False
    return True


def copy_source(dsc: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in [dsc.name, *dsc_files(dsc)]:
        shutil.copy2(dsc.parent / name, dest / name)
    if not complete(dest / dsc.name):
        raise StackError(f"{dsc}: its files changed while copied (a build's source that is being removed?); retry")
    return dest / dsc.name


def cached_dscs(cache: StackCache) -> list[Path]:
    """A stack build's downloaded source lies in its cache entry's src/ while it builds (removed after)."""
    return sorted(cache.archive.glob(f"*qemu-build_*/src/{SOURCE_PACKAGE}_{QEMU}*.dsc"))


def fetch_source(cache: StackCache, dest: Path) -> Path:
    """`apt-get source --download-only` through the stacks' private deb-src index, as a `source: build` stack does."""
    with cache.locked(say):
        apt = read_suite(cache, "bisect-demo", distro_suite(), None, say, kind="deb-src")
    versions = apt.versions(SOURCE_PACKAGE)
    version = next((v for v in versions if matches(QEMU, v)), None)
    if version is None:
        raise StackError(f"qemu {QEMU}'s source is not in {apt.where} (there: {', '.join(versions) or 'none'})")
    dest.mkdir(parents=True, exist_ok=True)
    say(f"fetching the source of qemu {version} from {apt.where}")
    run(["apt-get", *apt.options(), "source", "--download-only", f"{SOURCE_PACKAGE}={version}"], cwd=dest,
        timeout=1200, error=StackError, what=f"apt-get source {SOURCE_PACKAGE}={version}")
    return next(dest.glob(f"{SOURCE_PACKAGE}_*.dsc"))


def find_source(work: Path, explicit: Path | None, fetch: bool) -> Path:
    """The qemu 7.2 .dsc in WORK/src: --source's, the one copied before, a stack build's, or fetched (--fetch)."""
    src = work / "src"
    if explicit is not None:
        if not re.fullmatch(rf"{SOURCE_PACKAGE}_{re.escape(QEMU)}\S*\.dsc", explicit.name) or not explicit.is_file():
            raise StackError(f"--source {explicit}: not a {SOURCE_PACKAGE}_{QEMU}*.dsc file")
        if not complete(explicit):
            raise StackError(f"--source {explicit}: the files it names are not beside it or do not match its checksums")
        return explicit if explicit.parent.resolve() == src.resolve() else copy_source(explicit, src)
    kept = [d for d in sorted(src.glob(f"{SOURCE_PACKAGE}_{QEMU}*.dsc")) if complete(d)]
    if kept:
        return kept[-1]
    cache = StackCache()
    for dsc in reversed(cached_dscs(cache)):
        if complete(dsc):
            say(f"source: {dsc.name} from a stack build in {cache.archive}")
            return copy_source(dsc, src)
    if not fetch:
        raise StackError(f"no qemu {QEMU} source cached (not in {src}, no stack build's in {cache.archive}): pass "
                         "--fetch (apt-get source through the stacks' deb-src index: needs the network) or --source "
                         "QEMU.dsc")
    return fetch_source(cache, src)


# ---------------------------------------------------------------------------------------------------- the trees

def git_w(tree: Path, *args: str, date: int | None = None) -> str:
    """git that writes: a fixed identity (and date), no user or system configuration."""
    env = {**os.environ, **IDENTITY}
    if date is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{date} +0000"
    return run(["git", "-C", str(tree), *args], timeout=600, env=env, error=StackError,
               what=f"git {' '.join(args[:2])} in {tree}").stdout.strip()


def patch(tree: Path, patch_file: Path, reverse: bool = False) -> None:
    run(["patch", "-p1", "--batch", "--no-backup-if-mismatch", *(["-R"] if reverse else ["--forward"]),
         "-i", str(patch_file)], cwd=tree, error=StackError,
        what=f"{patch_file.name} does not {'revert' if reverse else 'apply'} in {tree}")


def insert(tree: Path, path: str, anchor: str, text: str, below: bool = False) -> None:
    """TEXT's lines above (or below) the one line of PATH that starts with ANCHOR."""
    file = tree / path
    lines = file.read_text().split("\n")
    at = [i for i, line in enumerate(lines) if line.startswith(anchor)]
    if len(at) != 1:
        raise StackError(f"{path}: {len(at)} lines start with {anchor!r} in this source (1 expected: not QEMU {QEMU}?)")
    lines[at[0] + below:at[0] + below] = text.split("\n")
    file.write_text("\n".join(lines))


def commit(tree: Path, n: int, subject: str, body: str) -> None:
    git_w(tree, "add", "-A", "-f")
    git_w(tree, "commit", "-q", "--no-verify", "-m", subject, "-m", body, date=DATE0 + 3600 * n)


def harmless(tree: Path, n: int, index: int) -> None:
    path, anchor, text, subject = HARMLESS[index]
    insert(tree, path, anchor, text)
    commit(tree, n, subject, HARMLESS_BODY)


def make_tree(tree: Path, dsc: Path, fix: Path) -> None:
    """Base (the source as dpkg-source unpacks it, the fix applied; tag good), 3 harmless commits, the fix undone,
    2 harmless (tag bad)."""
    say(f"unpacking {dsc.name} into {tree} (upstream tarball + Debian's patches), then {fix.name}")
    unpacked = dsc.parent / "tree"  # beside the .dsc, or dpkg-source copies the tarball next to the tree
    shutil.rmtree(unpacked, ignore_errors=True)
    run(["dpkg-source", "--no-check", "-x", str(dsc), str(unpacked)], timeout=900, error=StackError,
        what=f"dpkg-source -x {dsc.name}")
    unpacked.rename(tree)
    shutil.rmtree(tree / ".pc", ignore_errors=True)  # quilt's bookkeeping, no source
    patch(tree, fix)
    git_w(tree, "init", "-q", "-b", "main")
    commit(tree, 0, f"base: Debian 12's qemu {dsc.stem.split('_', 1)[1]} with 03bfc2188f06 backported (labs/patches)",
           f"{dsc.name} as `dpkg-source -x` unpacks it (what `source: build` stacks build), then\n"
           f"labs/patches/{fix.name}: the QEMU of labs/fixed-qemu.yaml.")
    git_w(tree, "tag", "good")
    for n, index in enumerate((0, 1, 2, None, 3, 4), 1):
        if index is None:
            patch(tree, fix, reverse=True)
            commit(tree, n, BAD_SUBJECT, BAD_BODY)
        else:
            harmless(tree, n, index)
    git_w(tree, "tag", "bad")


def make_flaky(flaky: Path, tree: Path) -> None:
    """The same base (objects hard-linked from tree/) and 3 harmless commits (tree/'s first 3, the same ids), the
    random loss (RANDOM_EDITS), 2 harmless (tag bad): the bad side loses pages in about one migration in two.
    Checked out sparsely (migration/ and the top files): bisect reads commits (`git archive`), not working files."""
    say(f"making {flaky}: the same base, 3 harmless commits, one that loses pages at random, 2 harmless")
    git_w(tree, "clone", "-q", "--local", "--no-checkout", str(tree), str(flaky))
    git_w(flaky, "remote", "remove", "origin")
    git_w(flaky, "tag", "-d", "bad")
    git_w(flaky, "sparse-checkout", "set", "--cone", "migration")
    git_w(flaky, "reset", "-q", "--hard", "good")
    for n, index in enumerate((0, 1, 2, None, 3, 4), 1):
        if index is None:
            for anchor, below, text in RANDOM_EDITS:
                insert(flaky, RANDOM_PATH, anchor, text, below)
            commit(flaky, n, RANDOM_SUBJECT, RANDOM_BODY)
        else:
            harmless(flaky, n, index)
    git_w(flaky, "tag", "bad")


def write_series(work: Path, tree: Path, fix: Path) -> tuple[list[Path], Path]:
    """series/000N-*.patch (good..bad) and series-lab.yaml: fixed-qemu.yaml with its stack's patch in WORK."""
    series = work / "series"
    git_w(tree, "format-patch", "-q", "--no-signature", "-o", str(series), "good..bad")
    patches = sorted(series.glob("*.patch"))
    (work / "patches").mkdir()
    base_patch = shutil.copy2(fix, work / "patches" / fix.name)
    doc = yaml.safe_load(FIXED_LAB.read_text())
    doc["stacks"][BASE_STACK]["patches"] = [str(base_patch)]
    lab = work / "series-lab.yaml"
    lab.write_text(f"# labs/fixed-qemu.yaml with its stack's patch copied beside it (written by\n"
                   f"# benchmarks/bisect_demo.py): `--stack {BASE_STACK} --series {series}/*.patch` applies\n"
                   f"# the series on the fixed 7.2 source.\n" + yaml.safe_dump(doc, sort_keys=False))
    load_lab_config(lab)  # one line if it is not a valid lab file
    series_stacks(lab, BASE_STACK, patches)  # ... or not the form bisect --series takes
    check_series(tree, patches, series / ".check")
    return patches, lab


def show(tree: Path, rev: str, path: str) -> bytes:
    return run(["git", "-C", str(tree), "show", f"{rev}:{path}"], text=False, error=StackError).stdout


def check_series(tree: Path, patches: list[Path], scratch: Path) -> None:
    """The series applies as a build stack applies it (`patch -p1 --forward --batch`, in order) to the files it
    touches at good, and gives them as they are at bad."""
    touched = git(tree, "diff", "--name-only", "good", "bad").splitlines()
    for path in touched:
        (scratch / path).parent.mkdir(parents=True, exist_ok=True)
        (scratch / path).write_bytes(show(tree, "good", path))
    for p in patches:
        run(["patch", "-p1", "--forward", "--batch", "-i", str(p)], cwd=scratch, error=StackError,
            what=f"series: {p.name} does not apply as a build stack applies it")
    for path in touched:
        if (scratch / path).read_bytes() != show(tree, "bad", path):
            raise StackError(f"series: {path} after the series is not {path} at bad")
    shutil.rmtree(scratch)


def commands(work: Path, patches: list[Path], selection: list[str], confirm: int, stamp: str) -> dict[str, list[str]]:
    lab = [sys.executable, "-m", "lab", "--lab-config"]
    tail = lambda case: ["--confirm", str(confirm), "--out", str(work / "runs" / f"{case}-{stamp}"), "--", *selection]  # noqa: E731
    return {
        "tree": [*lab, str(FIXED_LAB), "bisect", "--tree", str(work / "tree"), "--good", "good", "--bad", "bad",
                 *tail("tree")],
        "series": [*lab, str(work / "series-lab.yaml"), "bisect", "--stack", BASE_STACK, "--series",
                   *map(str, patches), *tail("series")],
        "flaky": [*lab, str(FIXED_LAB), "bisect", "--tree", str(work / "flaky"), "--good", "good", "--bad", "bad",
                  *tail("flaky")],
    }


def recipe(dsc: Path) -> str:
    h = hashlib.sha256(dsc.read_bytes() + FIX.read_bytes())
    h.update(repr((HARMLESS, HARMLESS_BODY, BAD_SUBJECT, BAD_BODY, BAD_AT, DATE0, IDENTITY)).encode())
    h.update(repr((RANDOM_PATH, RANDOM_EDITS, RANDOM_SUBJECT, RANDOM_BODY)).encode())
    h.update(FIXED_LAB.read_bytes())
    return h.hexdigest()[:12]


def history(tree: Path) -> list[str]:
    return git(tree, "log", "--reverse", "--format=%h%d %s", "bad").splitlines()


def prepare(args) -> int:
    work, marker = args.work, args.work / "demo.json"
    os.nice(10)  # IO mostly; leave the cores to whatever else runs
    started = time.monotonic()
    ours = ("tree", "flaky", "series", "patches", "series-lab.yaml", "src")
    if not marker.exists() and any((work / name).exists() for name in ours):
        raise StackError(f"{work} holds {', '.join(n for n in ours if (work / n).exists())} but no demo.json: not "
                         "this script's; name another --work DIR")
    work.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        marker.write_text(json.dumps({"recipe": "", "made": "incomplete"}))  # ours from now on
    dsc = find_source(work, args.source, args.fetch)
    key = recipe(dsc)
    try:
        made = json.loads(marker.read_text())
    except ValueError:
        made = {}  # damaged: made anew
    whole = all((work / name / ".git").is_dir() for name in ("tree", "flaky")) and any((work / "series").glob("*.patch"))
    if made.get("recipe") == key and whole and not args.again:
        say(f"{work} is up to date (recipe {key}); --again makes it anew")
    else:
        marker.write_text(json.dumps({"recipe": "", "made": "incomplete"}))
        for name in ours[:-1]:
            path = work / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        make_tree(work / "tree", dsc, FIX)
        make_flaky(work / "flaky", work / "tree")
        write_series(work, work / "tree", FIX)
        marker.write_text(json.dumps({"recipe": key, "source": dsc.name, "made": time.strftime("%F %T")}, indent=1))
    patches = sorted((work / "series").glob("*.patch"))
    for case, tree in (("tree", work / "tree"), ("flaky", work / "flaky")):
        print(f"{case}: {tree}")
        print("\n".join(f"  {line}" for line in history(tree)))
    print(f"series: {len(patches)} patches in {work / 'series'}, on stack {BASE_STACK} of {work / 'series-lab.yaml'}")
    print("\n".join(f"  {p.name}" for p in patches))
    print(f"prepared in {time.monotonic() - started:.0f} s; `run` runs, from {ROOT}:")
    for argv in commands(work, patches, SELECTION, 2, "TIME").values():
        print(f"  {shlex.join(argv)}")
    return 0


# ---------------------------------------------------------------------------------------------------- the runs

EXPECT = {"tree": ("found", BAD_SUBJECT), "series": ("found", f"up to 000{BAD_AT + 1}-"), "flaky": ("undecided", "")}


def summary(case: str, out: Path, status: int, wall_s: float) -> bool:
    """One case's verdict, builds against ceil(log2(N)) and minutes; True when it is the expected one."""
    state, mark = EXPECT[case]
    if not (out / "bisect.json").exists():
        print(f"{case}: no verdict (exit {status}, no {out / 'bisect.json'}: the lab or a build failed, see above); "
              f"{wall_s / 60:.1f} min")
        return False
    result = json.loads((out / "bisect.json").read_text())
    n = len(result["candidates"]) - 1
    built = len({s["index"] for s in result["steps"]}) + 1  # and the good side's, the reference
    first_bad = result["candidates"][result["first_bad"]] if result.get("first_bad") is not None else ""
    ok = result["state"] == state and (not mark or (result["state"] == "found" and mark in first_bad))
    print(f"{case}: {result['state']}: {result['why']}")
    print(f"  {'as expected' if ok else 'NOT the expected ' + state + (' at ' + mark if mark else '')}; "
          f"{built} builds ({result['builds']} runs of {len(result['steps'])} step(s), and the good side's) against "
          f"ceil(log2({n})) = {math.ceil(math.log2(max(2, n)))}; {wall_s / 60:.1f} min; {out / 'bisect.md'}")
    return ok


def run_cases(args) -> int:
    work = args.work
    patches = sorted((work / "series").glob("*.patch"))
    if not (work / "demo.json").exists() or not patches:
        raise StackError(f"{work} is not prepared: run `benchmarks/bisect_demo.py prepare --work {work}` first")
    for tree in (work / "tree", work / "flaky"):
        for rev in ("good", "bad"):
            resolve_commit(tree, rev)  # one line if a tree is gone or was changed by hand
    selection = [a for a in args.pytest_args if a != "--"] or SELECTION
    stamp = time.strftime("%Y%m%d-%H%M%S")
    argvs = commands(work, patches, selection, args.confirm, stamp)
    cases = args.only or list(CASES)
    for case in cases:
        print(f"{case}: cd {ROOT} && {shlex.join(argvs[case])}")
    results = []
    for case in cases:
        say(f"case {case}")
        started = time.monotonic()
        status = subprocess.run(argvs[case], cwd=ROOT).returncode
        results.append((case, Path(argvs[case][argvs[case].index("--out") + 1]), status, time.monotonic() - started))
    print()
    oks = [summary(*r) for r in results]
    return 0 if all(oks) else 1


def main() -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `prepare | head` ends quietly
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write the trees, the series and series-lab.yaml into --work (IO only)")
    prep.add_argument("--source", type=Path, metavar="QEMU.dsc", help="the qemu 7.2 source package to use")
    prep.add_argument("--fetch", action="store_true", help="when no source is cached: apt-get source (network)")
    prep.add_argument("--again", action="store_true", help="make everything anew even if it is up to date")
    prep.set_defaults(func=prepare)
    go = sub.add_parser("run", help="run the three bisects on the lab, one after another, and sum them up")
    go.add_argument("--only", action="append", choices=CASES, help="only this case (repeatable)")
    go.add_argument("--confirm", type=int, default=2, metavar="N", help="bisect's runs per step (default 2)")
    go.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                    help=f"each step's selection (default: {shlex.join(SELECTION)})")
    go.set_defaults(func=run_cases)
    for p in (prep, go):
        p.add_argument("--work", type=Path, default=DEFAULT_WORK, metavar="DIR", help=f"default {DEFAULT_WORK}")
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.work == ROOT or ROOT in args.work.parents or args.work in ROOT.parents:
        print(f"bisect demo: error: --work {args.work}: must be outside the project tree {ROOT}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (LabError, OSError) as exc:
        print(f"bisect demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bisect demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

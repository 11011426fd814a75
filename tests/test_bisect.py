"""`python -m lab bisect` end to end on small trees: real git history, the real search and the real verdict reader
(the gate's comparison of run folders); the build and the suites' run are a stub that writes the run folder a
QEMU at that commit would produce (the real builds belong to docs/bisect.md's measured runs, not to make test)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab.bisect.runner import git_candidates, run_bisect, series_stacks
from lab.errors import ConfigError, StackError

TEST = "suites/live_migration/test_live_migration.py::test_measured_migration[precopy-dirty-4MiBs-link-16MiBs]"
SELECTION = ["suites/live_migration", "-k", "dirty"]


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tree(tmp_path) -> Path:
    """Ten commits; the sixth ("migration: drop the TLB reset ...") brings the regression in for good."""
    repo = tmp_path / "qemu"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "lab@example.invalid")
    git(repo, "config", "user.name", "lab")
    for i in range(10):
        (repo / f"file{i}.c").write_text(f"/* {i} */\n")
        if i == 5:
            (repo / "regression").write_text("tlb_reset_dirty_range_all() removed\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "migration: drop the TLB reset after the dirty sync" if i == 5 else f"harmless {i}")
    return repo


def write_run(folder: Path, lost: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = '<failure message="lost">lost</failure>' if lost else ""
    (folder / "junit.xml").write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest"><testcase '
                                      f'classname="suites.live_migration.test_live_migration" name="{TEST.split("::")[1]}" '
                                      f'time="1">{body}</testcase></testsuite></testsuites>')
    (folder / "results.jsonl").write_text(json.dumps({
        "test": TEST, "kind": "live-migration", "scenario": "precopy-dirty", "ok": True, "oracle": {"wrong": lost},
        "findings": [{"kind": "lost-pages", "text": f"{lost} pages"}] if lost else []}) + "\n")


def stub(bad_when, calls: list):
    def run_step(stack, lab_file, host, selection, folder, say):
        calls.append(stack)
        write_run(folder, 14 if bad_when(stack, len(calls)) else 0)
        return 0.01, 0.02
    return run_step


def has_regression(tree: Path):
    return lambda stack, _n: subprocess.run(["git", "-C", str(tree), "cat-file", "-e", f"{stack['commit']}:regression"],
                                            capture_output=True).returncode == 0


def test_bisect_names_the_commit_that_brought_the_regression(tree, tmp_path):
    shas, labels = git_candidates(tree, "main~9", "main")
    stacks = [{"source": "git", "tree": str(tree), "commit": s} for s in shas]
    calls: list = []
    outcome = run_bisect(stacks, labels, tmp_path / "lab.yaml", None, SELECTION, tmp_path / "out", lambda _m: None,
                         run_step=stub(has_regression(tree), calls))
    assert outcome.state == "found", outcome.why
    assert labels[outcome.first_bad].endswith("migration: drop the TLB reset after the dirty sync")
    assert labels[outcome.last_good].endswith("harmless 4")
    # 10 candidates: the bad side confirmed, then log2(9) ~ 4 steps, 2 runs each, plus the good side's reference.
    assert outcome.builds <= 2 * (1 + 4) and len(calls) == outcome.builds + 1
    log = (tmp_path / "out" / "bisect.md").read_text()
    assert "**first bad**" in log and "new findings: lost-pages" in log and "pages lost" in log


def test_a_flaky_bad_side_is_undecided_never_a_wrong_commit(tree, tmp_path):
    shas, labels = git_candidates(tree, "main~9", "main")
    stacks = [{"source": "git", "tree": str(tree), "commit": s} for s in shas]
    flaky = has_regression(tree)
    outcome = run_bisect(stacks, labels, tmp_path / "lab.yaml", None, SELECTION, tmp_path / "out", lambda _m: None,
                         run_step=stub(lambda stack, n: flaky(stack, n) and n % 2 == 0, []))
    assert outcome.state == "undecided" and outcome.first_bad is None, outcome.why
    assert "not bad on every run" in outcome.why


def test_a_patch_series_is_bisected_over_how_many_patches_are_applied(tmp_path):
    lab = tmp_path / "lab.yaml"
    lab.write_text("stacks:\n  base: {source: build, qemu: '7.2'}\nhosts:\n  - {name: hv1, address: 198.19.5.11}\n")
    series = [tmp_path / f"000{i}-backport.patch" for i in range(1, 7)]
    stacks, labels = series_stacks(lab, "base", series)
    assert labels[0] == "0 of 6 patches" and labels[3] == "3 of 6 patches (up to 0003-backport.patch)"
    outcome = run_bisect(stacks, labels, lab, None, SELECTION, tmp_path / "out", lambda _m: None,
                         run_step=stub(lambda stack, _n: len(stack["patches"]) >= 4, []))
    assert outcome.state == "found" and labels[outcome.first_bad] == "4 of 6 patches (up to 0004-backport.patch)"


def test_bad_input_is_one_line(tree, tmp_path):
    with pytest.raises(StackError, match="no commit 'nope'"):
        git_candidates(tree, "nope", "main")
    with pytest.raises(ConfigError, match="does not descend"):
        git_candidates(tree, "main", "main~3")
    with pytest.raises(StackError, match="not a git working tree"):
        git_candidates(tmp_path, "a", "b")


def test_a_git_stack_carries_the_upstream_fixes_its_history_cherry_picked_and_not_reverted(tmp_path):
    """A git stack's record names the upstream commits its history says it carries (git cherry-pick -x's trailer,
    or "upstream X" as labs/patches write it), so a registered defect with that fix is not held against it; a
    `git revert` of the backport takes it away again."""
    from lab.stacks.git_build import history_backports
    repo = tmp_path / "qemu"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "lab@example.invalid")
    git(repo, "config", "user.name", "lab")
    fix, other = "03bfc2188f06" + "0" * 28, "1328fe0c32d5474604105b8105310e944976b058"

    def commit(name: str, message: str) -> str:
        (repo / name).write_text(message)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", message)
        return git(repo, "rev-parse", "HEAD")

    commit("base", "base")
    picked = commit("physmem.c", f"physmem: fix the TCG dirty bitmap\n\n(cherry picked from commit {fix})")
    commit("ram.c", f"migration: backport of upstream {other[:12]} (a patch's own words)")
    assert history_backports(repo, "HEAD") == [fix, other[:12]]
    assert history_backports(repo, "HEAD~2") == []  # before the backport: the build does not carry it
    git(repo, "revert", "--no-edit", picked)  # "This reverts commit <picked>."
    assert history_backports(repo, "HEAD") == [other[:12]]

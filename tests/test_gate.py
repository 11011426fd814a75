"""The release gate's decisions on two run folders: a verdict that gets worse, evidence that gets worse under
the same verdict (more pages lost, a new finding kind), a probe that shifts the wrong way with significance
(downtime, total time, throughput), a shift too small or too noisy to count, too few samples, data the
candidate lacks, and bad input. The run folders are synthetic: the cases are fed to the real code."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import ReportError
from lab.results.gate import MIN_SAMPLES, compare, load, markdown
from tests.labtools import nothing_left, write_lab_config

ROOT = Path(__file__).resolve().parent.parent
TEST = "suites/live_migration/test_live_migration.py::test_measured_migration[precopy-idle]"


def write_run(folder: Path, state: str, downtimes: dict[str, list[float]], *, total_s: float = 2.0,
              mibs: float = 100.0, lost: int | None = None, findings: tuple[str, ...] = ()) -> Path:
    """A run folder of one test (TEST) and one migration record per sample: `total_s` and `mibs` (throughput)
    per migration, the oracle's `lost` pages per move, and the findings of every migration (kinds)."""
    folder.mkdir(parents=True)
    body = {"pass": "", "fail": '<failure message="boom">boom</failure>', "skipped": '<skipped message="no" />',
            "excused": '<skipped type="pytest.xfail" message="excused by QEMU-TCG-DIRTY-BITMAP" />'}[state]
    (folder / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        f'<testcase classname="suites.live_migration.test_live_migration" name="{TEST.split("::")[1]}" '
        f'time="1.0">{body}</testcase></testsuite></testsuites>')
    lines = []
    for i, probe_values in enumerate(zip(*downtimes.values())):
        doc = {"test": TEST, "kind": "live-migration", "scenario": "precopy-idle", "ok": True,
               "downtime_ms": dict(zip(downtimes, probe_values)), "total_s": total_s + i * 0.01,
               "libvirt_stats": {"data_processed": int((mibs + i % 3) * total_s * 2**20), "time_elapsed": total_s * 1000},
               "findings": [{"kind": k, "text": k} for k in findings]}
        if lost is not None:
            doc["oracle"] = {"wrong": lost}
        lines.append(json.dumps(doc))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def gate_cli(base: Path, cand: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "compare", str(base), str(cand), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)


def samples(center: float, n: int = 8) -> dict[str, list[float]]:
    spread = [center + d for d in (-6, -3, -1, 0, 1, 2, 4, 7, 5, -4)[:n]]
    return {"hypervisor": spread, "guest": [v + 40 for v in spread], "network": [v + 80 for v in spread]}


def test_a_probe_shifted_up_with_significance_is_a_regression(tmp_path):
    result = compare(load(write_run(tmp_path / "base", "pass", samples(80))),
                     load(write_run(tmp_path / "cand", "pass", samples(200))))
    assert result["regressions"] == ["precopy-idle hypervisor", "precopy-idle guest", "precopy-idle network"]
    hyp = result["probes"][0]
    assert hyp["p_value"] < 0.05 and hyp["effect"] == 1.0 and hyp["median_shift"] == pytest.approx(120)


def test_the_same_distribution_and_a_shift_below_the_limit_are_no_regression(tmp_path):
    base = load(write_run(tmp_path / "base", "pass", samples(80)))
    assert compare(base, load(write_run(tmp_path / "same", "pass", samples(80))))["regressions"] == []
    # 8 ms up: significant, but below max(10 ms, 20 % of 80 ms = 16 ms)
    assert compare(base, load(write_run(tmp_path / "small", "pass", samples(88))))["regressions"] == []


def test_a_verdict_that_gets_worse_is_a_regression_and_one_that_gets_better_is_not(tmp_path):
    ok, excused = write_run(tmp_path / "ok", "pass", samples(80)), write_run(tmp_path / "ex", "excused", samples(80))
    worse = compare(load(ok), load(excused))
    assert worse["regressions"] == [TEST] and worse["tests"][0]["change"] == "worse"
    better = compare(load(write_run(tmp_path / "bad", "fail", samples(80))), load(ok))
    assert better["regressions"] == [] and better["tests"][0]["change"] == "better"


def test_too_few_samples_are_not_judged_and_the_cli_says_so_with_its_own_exit_status(tmp_path):
    few = MIN_SAMPLES - 1
    base = write_run(tmp_path / "base", "pass", samples(80, few))
    cand = write_run(tmp_path / "cand", "pass", samples(200, few))
    result = compare(load(base), load(cand))
    assert result["regressions"] == [] and len(result["undecided"]) == 5  # 3 downtimes, total time, throughput
    proc = subprocess.run([sys.executable, "-m", "lab", "compare", str(base), str(cand), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert "5 item(s) undecided" in proc.stdout and (tmp_path / "o" / "gate.json").exists()
    regress = subprocess.run([sys.executable, "-m", "lab", "compare", str(write_run(tmp_path / "b2", "pass", samples(80))),
                              str(write_run(tmp_path / "c2", "pass", samples(200))), "--out", str(tmp_path / "o2")],
                             cwd=ROOT, capture_output=True, text=True)
    assert regress.returncode == 1 and "3 regression(s)" in regress.stdout


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    with pytest.raises(ReportError, match="not a run folder"):
        load(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lab", "compare", str(tmp_path), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a run folder" in proc.stderr


def test_an_unknown_stack_is_one_line_before_anything_runs(tmp_path):
    config = write_lab_config(tmp_path, "kvmgt0", 7)
    proc = subprocess.run([sys.executable, "-m", "lab", "--lab-config", str(config), "gate", "--baseline", "system",
                           "--candidate", "backprots", "--out", str(tmp_path / "g")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "unknown stack 'backprots'" in proc.stderr and not (tmp_path / "g").exists()


@pytest.mark.lab
def test_the_gate_runs_both_sides_on_their_stacks_then_compares(tmp_path):
    """End to end on two real labs (both sides `system` here: a candidate stack's first fetch is CI's cost
    elsewhere): each side's lab file names its stack, its run is a report folder, the lab is gone afterwards,
    and the exit status is what the comparison found (3: one migration a side is too few to judge; 1 or 0
    when a side's migration failed and left no sample to judge, seen on a loaded machine)."""
    config = write_lab_config(tmp_path, "kvmgt1", 8)
    out = tmp_path / "gate"
    proc = subprocess.run([sys.executable, "-m", "lab", "--lab-config", str(config), "gate", "--baseline", "system",
                           "--candidate", "system", "--out", str(out), "--", "suites/live_migration", "-k",
                           "precopy-idle", "--repeat", "1", "-p", "no:randomly"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert (out / "gate.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gate.json").read_text())
    expected = 1 if result["regressions"] else 3 if result["undecided"] else 0
    assert proc.returncode == expected, proc.stdout[-3000:] + proc.stderr[-3000:]
    for side in ("baseline", "candidate"):
        assert "stack: system" in (out / side / "lab.yaml").read_text()
        assert (out / side / "junit.xml").exists() and (out / side / "results.jsonl").exists()
    # The candidate is judged by the baseline's calibration, never one it measured itself.
    pinned = json.loads((out / "calibration.json").read_text())
    candidate_cals = [json.loads(line).get("calibration") for line in
                      (out / "candidate" / "results.jsonl").read_text().splitlines()]
    assert pinned in candidate_cals and "judged by the limits of baseline's calibration" in proc.stdout + proc.stderr
    samples = [p for p in result["probes"] if p["scenario"] == "precopy-idle"]
    assert not samples or (result["undecided"] and "not judged" in proc.stdout)  # n=1 a side is never judged
    assert nothing_left("kvmgt1")


def test_the_oracles_readings_are_compared_scenario_by_scenario(tmp_path):
    base = write_run(tmp_path / "base", "excused", samples(80))
    cand = write_run(tmp_path / "cand", "pass", samples(80))
    with open(base / "results.jsonl", "a") as f:
        f.write(json.dumps({"kind": "oracle-migration", "scenario": "precopy-dirty",
                            "paused_destination_check": {"wrong": 14, "checked_pages": 12304}}) + "\n")
    with open(cand / "results.jsonl", "a") as f:
        for _ in range(3):
            f.write(json.dumps({"kind": "live-migration", "scenario": "precopy-dirty", "ok": True,
                                "oracle": {"wrong": 0}}) + "\n")
    result = compare(load(base), load(cand))
    assert result["memory"] == [{"scenario": "precopy-dirty", "regression": False,
                                 "base": {"moves": 1, "moves_with_lost_pages": 1, "lost_pages": 14},
                                 "cand": {"moves": 3, "moves_with_lost_pages": 0, "lost_pages": 0}}]
    text = markdown(result)
    assert "| precopy-dirty | 14 pages lost, in 1 of 1 move(s) | 0 pages lost in 3 move(s) |" in text


def test_a_candidate_worse_only_in_evidence_is_a_regression(tmp_path):
    """fail -> fail and excused -> excused are no "same" when the candidate loses ten times the pages, or has a
    finding kind the baseline did not: exit 1, with six samples a side (issue 24: it exited 0 before)."""
    base = write_run(tmp_path / "base", "fail", samples(80, 6), lost=24, findings=("lost-pages",))
    cand = write_run(tmp_path / "cand", "fail", samples(80, 6), lost=245, findings=("lost-pages",))
    result = compare(load(base), load(cand))
    assert result["tests"][0]["change"] == "same" and result["undecided"] == []
    assert result["regressions"] == ["precopy-idle memory: 144 pages lost, in 6 of 6 move(s) -> "
                                     "1470 pages lost, in 6 of 6 move(s)"]
    proc = gate_cli(base, cand, tmp_path / "o")
    assert proc.returncode == 1 and "1 regression(s)" in proc.stdout, proc.stdout
    newkind = write_run(tmp_path / "new", "fail", samples(80, 6), lost=24, findings=("lost-pages", "guest-rebooted"))
    worse = compare(load(base), load(newkind))
    assert worse["tests"][0]["change"] == "worse evidence" and worse["tests"][0]["new_findings"] == ["guest-rebooted"]
    assert worse["regressions"] == [f"{TEST} (new findings: guest-rebooted)"]
    # More moves at the baseline's rate per move are no regression.
    same_rate = write_run(tmp_path / "rate", "fail", samples(80, 8), lost=24, findings=("lost-pages",))
    assert compare(load(base), load(same_rate))["regressions"] == []


def test_a_slower_migration_or_a_lower_throughput_is_a_regression(tmp_path):
    base = write_run(tmp_path / "base", "pass", samples(80), total_s=2.0, mibs=100)
    slower = compare(load(base), load(write_run(tmp_path / "slow", "pass", samples(80), total_s=12.0, mibs=100)))
    assert slower["regressions"] == ["precopy-idle total"]
    thinner = compare(load(base), load(write_run(tmp_path / "thin", "pass", samples(80), total_s=2.0, mibs=40)))
    assert thinner["regressions"] == ["precopy-idle throughput"]
    faster = compare(load(base), load(write_run(tmp_path / "fast", "pass", samples(80), total_s=1.0, mibs=200)))
    assert faster["regressions"] == [] and faster["undecided"] == []


def test_data_the_candidate_lacks_is_undecided_never_a_pass(tmp_path):
    """A test that passed on the baseline and was skipped (or not run) on the candidate, a scenario with samples
    on one side only, moves the oracle checked on one side only: exit 3, naming what is missing."""
    base = write_run(tmp_path / "base", "pass", samples(80), lost=0)
    skipped = write_run(tmp_path / "skip", "skipped", {"hypervisor": [], "guest": [], "network": []})
    result = compare(load(base), load(skipped))
    assert result["regressions"] == []
    assert any(TEST in m and "skipped on the candidate" in m for m in result["missing"])
    assert any(m.startswith("precopy-idle guest: 8 sample(s) on the baseline, none") for m in result["missing"])
    assert any(m.startswith("precopy-idle: 8 move(s) checked by the oracle") for m in result["missing"])
    proc = gate_cli(base, skipped, tmp_path / "o")
    assert proc.returncode == 3 and "missing:" in proc.stdout, proc.stdout
    not_run = tmp_path / "none"
    not_run.mkdir()
    (not_run / "junit.xml").write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest"/></testsuites>')
    (not_run / "results.jsonl").write_text("")
    assert gate_cli(base, not_run, tmp_path / "o2").returncode == 3

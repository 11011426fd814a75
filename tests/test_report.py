"""The HTML run report (lab/results/report): a real run's report rendered in headless Chromium
(Debian's chromium) with no console error, every plot and table present and the screenshots kept
under this run's report folder; absent figures shown as absent, excused as its own state; bad
input in one line; the comparison page; the report written at the end of a pytest run."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.results.report import build_report, check_page, load_run, read_summary, render_comparison
from lab.results.report.series import timeline

ROOT = Path(__file__).resolve().parent.parent
REAL_RUN = Path(__file__).parent / "data" / "report-run"
PNG = b"\x89PNG\r\n\x1a\n"


def real_run(into: Path) -> Path:
    """A copy of the trimmed real run (tests/data/report-run/README.md says where it comes from)."""
    run = into / "report-run"
    shutil.copytree(REAL_RUN, run)
    return run


def junit(path: Path, cases: list[tuple[str, str, str, str]]) -> None:
    """cases: (classname, name, state, reason) with state pass | fail | xfail | skip."""
    suite = ET.Element("testsuite", name="pytest")
    for classname, name, state, reason in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="1.0")
        if state == "fail":
            ET.SubElement(case, "failure", message=reason).text = "Traceback...\n" + reason
        elif state == "xfail":
            ET.SubElement(case, "skipped", type="pytest.xfail", message=reason)
        elif state == "skip":
            ET.SubElement(case, "skipped", type="pytest.skip", message=reason).text = f"file.py:1: {reason}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ET.tostring(suite, encoding="unicode"))


def records(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


# -- the real run, in a real browser -------------------------------------------------------------

def test_a_real_runs_report_renders_in_headless_chromium_with_every_plot_and_table(report_dir):
    kept = report_dir / "report-check"  # screenshots stay with this run's reports
    shutil.rmtree(kept, ignore_errors=True)
    run = real_run(kept)
    index = build_report(run)
    data = load_run(run)
    scenarios = {r["scenario"] for r in data.of_kind("live-migration") if isinstance(r.get("downtime_ms"), dict)}
    scenarios |= {r["scenario"] for r in data.of_kind("live-migration-summary")}  # one that stopped before measuring too
    with_series = [r for r in data.of_kind("live-migration") if r.get("series") and (run / r["series"]).exists()]
    missing = [r for r in data.of_kind("live-migration") if r.get("series") and not (run / r["series"]).exists()]
    assert scenarios and with_series and missing and data.of_kind("cold-migration") and data.of_kind("contrast"), \
        "the fixture run lost its measured migrations, its series or its cold migrations"

    page = check_page(index, {kept / "summary.png": None, kept / "timeline.png": "figure.timeline"})

    assert page.console_errors == []
    assert page.remote_requests == [], "the report must load nothing from the network"
    dom = page.dom
    assert {"summary", "failed", "live", "preflight", "cold", "hotpatch"} <= set(dom["sections"])
    tables = {t["id"] for t in dom["tables"] if t["id"]}
    assert {"run-facts", "hosts", "failed-tests", "preflight-table", "cold-migrations", "live-other"} <= tables
    assert "contrast" in tables
    classes = [t["cls"] for t in dom["tables"]]
    assert classes.count("data stats") == len(scenarios)
    assert classes.count("data migrations") == len({r["scenario"] for r in data.of_kind("live-migration")
                                                     if isinstance(r.get("downtime_ms"), dict)})
    assert all(t["rows"] > 1 for t in dom["tables"]), "an empty table"
    images = dom["images"]
    assert [i for i in images if not i["ok"]] == [], "a plot did not load"
    srcs = [i["src"] for i in images]
    assert sum("/probes-" in s for s in srcs) == len(scenarios)
    assert "Records this report does not show" not in index.read_text()
    assert sum("/timeline-" in s for s in srcs) == len(with_series)
    assert any(s.endswith("cold-vs-live.png") for s in srcs)
    html = index.read_text()
    assert html.count("is missing.") == len(missing)  # a series left out is said to be absent, not drawn empty
    for path in (kept / "summary.png", kept / "timeline.png"):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000, path


def test_every_failed_test_links_to_its_evidence_files(tmp_path):
    run = real_run(tmp_path)
    html = build_report(run).read_text()
    data = load_run(run)
    kept = [f for files in data.evidence.values() for f in files]
    assert kept, "the fixture run keeps evidence"
    for path in kept:
        assert f'href="{path}"' in html
        assert (run / path).is_file()


# -- honesty ---------------------------------------------------------------------------------------

def test_an_absent_figure_is_shown_as_absent_never_as_zero(tmp_path):
    run = tmp_path / "run"
    junit(run / "junit.xml", [("suites.live_migration.test_live_migration", "test_measured_migration[postcopy]", "pass", "")])
    records(run / "results.jsonl", [{
        "kind": "live-migration", "scenario": "postcopy", "test":
        "suites/live_migration/test_live_migration.py::test_measured_migration[postcopy]", "ok": True,
        "downtime_ms": {"hypervisor": None, "guest": 228.5, "network": 285.0}, "total_s": None,
        "libvirt_stats": {}, "thresholds": {"downtime_ms": {"hypervisor": 1500, "guest": 2500, "network": 2500}}}])
    html = build_report(run).read_text()
    row = html.split('class="data migrations"')[1].split("</tr>")[1]
    assert row.count('<span class="absent">absent</span>') >= 4  # hypervisor, total, iterations, bytes
    assert "228.5 ms" in row and "0.0 ms" not in row and "0.00 s" not in row
    assert "lab.json: absent" in html  # what the report could not read is said, not guessed


def test_a_limit_says_where_it_came_from_and_the_calibration_is_shown(tmp_path):
    from tests.test_calibration_model import TCG
    run = tmp_path / "run"
    test = "suites/live_migration/test_live_migration.py::test_measured_migration[precopy-idle]"
    junit(run / "junit.xml", [("suites.live_migration.test_live_migration", "test_measured_migration[precopy-idle]",
                               "pass", "")])
    limits = {"downtime_ms": {"hypervisor": 150.0, "guest": 324.0, "network": 480.0}, "total_s": 2.85,
              "basis": {"hypervisor": "model 50 ms, factor 3", "guest": "model 108 ms, factor 3",
                        "network": "model 160 ms, factor 3", "total_s": "model 0.95 s, factor 3"},
              "model": {"how": "B=118.0 MiB/s, D=300 ms"}}
    records(run / "results.jsonl", [
        {"kind": "live-migration", "scenario": "precopy-idle", "test": test, "ok": True, "thresholds": limits,
         "downtime_ms": {"hypervisor": 40.0, "guest": 100.0, "network": 150.0}, "total_s": 0.9},
        {"kind": "live-migration-summary", "scenario": "precopy-idle", "test": test, "thresholds": limits,
         "calibration": TCG.as_record(), "verdict": {"state": "pass", "why": "", "findings": []}}])
    html = build_report(run).read_text()
    assert "limit: model 50 ms, factor 3" in html and "limit: model 0.95 s, factor 3" in html
    assert "the limits follow from this lab&#39;s calibration: accelerator tcg; migration throughput 118.0 MiB/s" in html
    assert "the model: B=118.0 MiB/s" in html


def test_excused_failures_are_their_own_state_never_a_pass(tmp_path):
    run = tmp_path / "run"
    test = "suites/live_migration/test_live_migration.py::test_measured_migration[dirty]"
    junit(run / "junit.xml", [
        ("suites.live_migration.test_live_migration", "test_measured_migration[dirty]", "xfail",
         "excused by KNOWN-TCG-DIRTY: lost pages; fixed upstream by 03bfc2188f06 (QEMU 9.0.0)"),
        ("suites.live_migration.test_live_migration", "test_measured_migration[idle]", "pass", ""),
        ("suites.hotpatch.test_hotpatch", "test_apply", "skip", "libcareplus not found on PATH")])
    records(run / "results.jsonl", [
        {"kind": "live-migration", "scenario": "dirty", "test": test, "ok": True,
         "downtime_ms": {"hypervisor": 80.0, "guest": 120.0, "network": 150.0}, "total_s": 9.5},
        {"kind": "live-migration-summary", "scenario": "dirty", "test": test, "verdict": {
            "state": "excused", "defect": "KNOWN-TCG-DIRTY", "why": "excused by KNOWN-TCG-DIRTY: ...",
            "findings": [{"kind": "lost-pages", "text": "lost writes: 37 pages, first at 0x1000"}]}}])
    html = build_report(run).read_text()
    summary = read_summary(run)
    assert summary["totals"] == {"pass": 1, "fail": 0, "excused": 1, "skipped": 1}
    assert summary["scenarios"]["dirty"]["verdict"] == "excused by KNOWN-TCG-DIRTY"
    assert '<span class="badge excused">excused by KNOWN-TCG-DIRTY</span>' in html
    assert "lost-pages: lost writes: 37 pages, first at 0x1000" in html
    assert "libcareplus not found on PATH" in html  # skipped, with its reason


def test_hot_patch_stalls_and_diagnoses_are_shown_where_records_exist(tmp_path):
    run = tmp_path / "run"
    test = "suites/hotpatch/test_hotpatch.py::test_apply_changes_behaviour_with_a_bounded_stall_and_unapply_restores_it"
    junit(run / "junit.xml", [("suites.hotpatch.test_hotpatch",
                               "test_apply_changes_behaviour_with_a_bounded_stall_and_unapply_restores_it", "pass", "")])
    limits = {"apply_stall_ms": 150, "apply_frozen_ms": 100, "unapply_stall_ms": 150}
    records(run / "results.jsonl", [
        *({"kind": "hotpatch-apply", "test": test, "repetition": i, "patch_id": "0001", "frozen_time_us": 33000 + i,
           "stall_ms": 36.0 + i, "baseline_max_gap_ms": 2.1, "unapply_stall_ms": 30.0, "accelerator": "tcg",
           "thresholds": limits} for i in (1, 2, 3)),
        {"kind": "hotpatch-diagnosis", "test": test, "diagnosis": "buildid-mismatch",
         "verdict": "kpatch built for buildID aaa, the guest's QEMU is bbb: rebuild against the running binary",
         "evidence": ["libcare-ctl: No patch(es) applicable to PID 42"]}])
    html = build_report(run).read_text()
    assert (run / "report-assets" / "plots" / "hotpatch-stalls.png").read_bytes()[:8] == PNG
    table = html.split('id="hotpatch-applies"')[1].split("</table>")[0]
    assert table.count("<tr>") == 4 and "37.0 ms" in table and "33.0 ms" in table
    assert "buildid-mismatch" in html and "No patch(es) applicable to PID 42" in html


def test_hot_patch_timelines_around_apply_and_unapply_and_records_missing_fields(tmp_path):
    """The heartbeats around each apply and unapply (the suite's series sidecars) become timelines named for
    what happened; a record lacking fields the page shows (another writer's shape) reads as absent."""
    run = tmp_path / "run"
    junit(run / "junit.xml", [("suites.hotpatch.test_hotpatch", "test_apply", "pass", "")])
    start = 1_800_000_000_000_000_000
    beats = [start - 500_000_000 + i * 1_000_000 for i in range(1500) if not 400 <= i < 440]  # a 40 ms stall
    (run / "series").mkdir()
    for action in ("apply", "unapply"):
        (run / "series" / f"g-{action}-1.json").write_text(json.dumps(
            {"action": action, "started_ns": start, "finished_ns": start + 50_000_000, "heartbeat_ns": beats}))
    records(run / "results.jsonl", [
        {"kind": "hotpatch-apply", "repetition": 1, "stall_ms": 41.0, "series": "series/g-apply-1.json"},
        {"kind": "hotpatch-unapply", "repetition": 1, "stall_ms": 41.0, "series": "series/g-unapply-1.json"},
        {"kind": "hotpatch-diagnosis", "diagnosis": "doctor-outcome"},  # no verdict, no evidence
        {"kind": "hotpatch-build", "patch_id": "0001"}])  # no build times
    html = build_report(run).read_text()
    plots = sorted(p.name for p in (run / "report-assets" / "plots").glob("hotpatch-timeline-*.png"))
    assert len(plots) == 2 and all(f"plots/{p}" in html for p in plots), plots
    assert 'alt="hotpatch-apply: heartbeat gaps"' in html and 'alt="hotpatch-unapply: heartbeat gaps"' in html
    assert "doctor-outcome" in html


def test_every_gap_above_three_periods_is_listed_not_only_the_largest():
    start = 1_000_000_000_000
    beats = [start + i * 1_000_000 for i in range(100)]  # 1 ms apart ...
    beats += [beats[-1] + 150_000_000]  # ... a 150 ms switchover gap ...
    beats += [beats[-1] + i * 1_000_000 for i in range(1, 50)]
    beats += [beats[-1] + 12_000_000]  # ... and a later 12 ms stall
    line = timeline({"heartbeat_ns": beats, "echo_ns": [], "started_ns": start, "finished_ns": beats[-1]},
                    {}, {"heartbeat_period_ms": 1.0})
    assert [round(g.ms) for g in line.over] == [150, 12]
    assert line.threshold_ms == 3.0 and line.absent_markers == ["paused", "resumed"]
    no_period = timeline({"heartbeat_ns": beats}, {}, {})
    assert no_period.period_ms is None and no_period.over == [] and "absent" in no_period.period_source


def test_the_timeline_draws_the_guests_work_pace_beside_the_gaps(tmp_path):
    """Issue 26: the degradation beside the interruption. Windows of the guest's pace (the series' `pace`, as
    lab/migration/degradation.pace_series writes it) become a share of the pace before the move: a window with
    no heartbeat is a break, not 0 %; a series without pace says so instead of drawing nothing."""
    run = tmp_path / "run"
    test = "suites/live_migration/test_live_migration.py::test_measured_migration[precopy-dirty]"
    junit(run / "junit.xml", [("suites.live_migration.test_live_migration", "test_measured_migration[precopy-dirty]",
                               "pass", "")])
    start, window = 1_800_000_000_000_000_000, 100_000_000
    windows = [[start + i * window, 40, 12.5 if i < 0 else 25.0 if i < 30 else 12.5] for i in range(-20, 50)]
    windows[50] = [windows[50][0], 0, 0.0]  # the switchover: no heartbeat in this window
    beats = [start - 1_000_000_000 + i * 1_000_000 for i in range(6000) if not 3000 <= i < 3100]
    (run / "series").mkdir()
    (run / "series" / "with-pace.json").write_text(json.dumps(
        {"started_ns": start, "finished_ns": start + 3_000_000_000, "heartbeat_ns": beats, "pace_window_ns": window,
         "pace": windows}))
    (run / "series" / "without.json").write_text(json.dumps(
        {"started_ns": start, "finished_ns": start + 3_000_000_000, "heartbeat_ns": beats}))
    records(run / "results.jsonl", [
        {"kind": "live-migration", "scenario": "precopy-dirty", "test": test, "ok": True, "repetition": i,
         "downtime_ms": {"hypervisor": 80.0, "guest": 100.0, "network": 150.0}, "total_s": 3.0,
         "echo": {"beyond_guest": {"hop": "guest", "text": f"echo gap 150 ms = the guest's stop 100 ms + 50 ms #{i}"}},
         "series": f"series/{name}.json"} for i, name in ((1, "with-pace"), (2, "without"))])

    line = timeline(json.loads((run / "series" / "with-pace.json").read_text()), {}, {})
    assert line.pace[0] == (-2.0, 100.0) and line.pace[25] == (0.5, 50.0) and line.pace[50] == (3.0, None)
    html = build_report(run).read_text()
    assert "slowest window during the move 50% of its pace before" in html
    assert "before. Echo against the guest's stop: echo gap 150 ms = the guest&#39;s stop 100 ms + 50 ms #1." in html
    assert "Work pace <span class=\"absent\">absent</span>: the series has no work pace" in html
    plots = sorted((run / "report-assets" / "plots").glob("timeline-*.png"))
    assert len(plots) == 2 and all(p.read_bytes()[:8] == PNG for p in plots)


# -- bad input, the command, the hook ----------------------------------------------------------------

@pytest.mark.parametrize("what", ["missing", "empty", "file", "garbage"])
def test_a_folder_that_is_not_a_run_is_one_line_never_a_traceback(tmp_path, what):
    target = tmp_path / what
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("x")
    elif what == "garbage":
        target.mkdir()
        (target / "junit.xml").write_text("<not xml")
        (target / "results.jsonl").write_text("{broken\n[1]\n")
    proc = subprocess.run([sys.executable, "-m", "lab", "report", str(target)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "Traceback" not in proc.stderr + proc.stdout
    if what == "garbage":  # a run folder with unreadable parts still gets a report that says so
        assert proc.returncode == 0, proc.stderr
        html = (target / "index.html").read_text()
        assert "not a readable JUnit XML file" in html and "line 1: not JSON" in html
    else:
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert any(words in proc.stderr for words in ("not a run's report folder", "no such folder", "not a folder"))


def test_comparison_page_shows_verdict_changes_and_probe_shifts(tmp_path):
    base = real_run(tmp_path / "a")
    cand = real_run(tmp_path / "b")
    lines = (cand / "results.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    for doc in docs:  # the candidate's guest-perceived downtime doubles
        if doc.get("kind") == "live-migration" and isinstance((doc.get("downtime_ms") or {}).get("guest"), float):
            doc["downtime_ms"]["guest"] *= 2
    records(cand / "results.jsonl", docs)
    tree = ET.parse(cand / "junit.xml")
    case = next(c for c in tree.iter("testcase") if c.find("failure") is None and c.find("skipped") is None)
    ET.SubElement(case, "failure", message="planted")
    tree.write(cand / "junit.xml")
    page = render_comparison(read_summary(base), read_summary(cand), tmp_path)
    html = page.read_text()
    assert 'id="verdict-changes"' in html and "planted" in html
    assert '<span class="badge pass">pass</span></td><td><span class="badge fail">fail</span>' in html
    assert "(+100%)" in html
    check = check_page(page)
    assert check.console_errors == [] and check.remote_requests == []


def test_the_report_is_written_at_the_end_of_a_pytest_run_and_its_failure_never_fails_the_run(tmp_path):
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "test_one.py").write_text("def test_ok(record_property):\n    record_property('x', 1)\n")
    (tests / "conftest.py").write_text("pytest_plugins = ['lab.pytest_plugin']\n")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", str(tests)]
    proc = subprocess.run([*argv, "--report-dir", str(tmp_path / "ok")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f"kvm-lab: report {tmp_path / 'ok' / 'index.html'}" in proc.stdout
    assert (tmp_path / "ok" / "report-assets" / "style.css").exists()
    (tests / "conftest.py").write_text(  # a report that cannot be built: one line, and the run still passes
        "import lab.results.report.render as r\npytest_plugins = ['lab.pytest_plugin']\n"
        "r.TEMPLATES = r.Path('/nonexistent')\n")
    proc = subprocess.run([*argv, "--report-dir", str(tmp_path / "broken")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert proc.stdout.count("HTML report not written") == 1 and "Traceback" not in proc.stdout

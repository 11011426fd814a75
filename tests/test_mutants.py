"""The mutant runner's judgement (lab/mutants/runner.py) on synthetic run folders, and the corpus's headers.
The runs themselves (a QEMU build and the suites per mutant) are `python -m lab mutants run`'s, not make test's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab.errors import ConfigError, LabError
from lab.mutants.corpus import CORPUS, load_corpus, read_mutant
from lab.mutants.runner import BASE_LAB, Outcome, judge_mutant, lab_document, summary

TEST = "suites/live_migration/test_live_migration.py::test_measured_migration[precopy-idle]"
HEADER = ("Mutant: {id}\nBreaks: ram_save_host_page skips every 64th dirty page\nSymptom: lost guest memory\n"
          "Class: {kind}\nExpect: lost-pages\nUpstream: -\n\n--- a/migration/ram.c\n+++ b/migration/ram.c\n")


def run_folder(path: Path, state: str, kinds: tuple[str, ...] = (), excused_by: str = "") -> Path:
    path.mkdir(parents=True)
    body = {"pass": "", "fail": '<failure message="x">x</failure>',
            "excused": f'<properties><property name="excused_by" value="{excused_by}"/></properties>'
                       '<skipped type="pytest.xfail" message="excused" />'}[state]
    (path / "junit.xml").write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest">'
                                    '<testcase classname="suites.live_migration.test_live_migration" '
                                    f'name="{TEST.split("::")[1]}" time="1">{body}</testcase></testsuite></testsuites>')
    (path / "results.jsonl").write_text(json.dumps({"test": TEST, "kind": "live-migration-summary",
                                                    "findings": [{"kind": k, "text": k} for k in kinds]}) + "\n")
    return path


def mutant(tmp_path: Path, kind: str = "ram-not-sent"):
    path = tmp_path / f"01-m-{kind}.patch"
    path.write_text(HEADER.format(id=f"m-{kind}", kind=kind))
    return read_mutant(path)


@pytest.mark.parametrize("state, kinds, excused_by, kind, expected", [
    ("fail", ("lost-pages",), "", "ram-not-sent", "caught"),
    ("pass", (), "", "ram-not-sent", "missed"),
    ("excused", ("lost-pages",), "QEMU-TCG-DIRTY-BITMAP", "ram-not-sent", "excused"),
    ("fail", ("threshold",), "", "negative-control", "false-alarm"),
    ("pass", (), "", "negative-control", "missed"),
], ids=["caught", "missed", "excused-names-the-defect", "negative-caught-is-a-false-alarm", "negative-quiet"])
def test_a_mutant_is_judged_against_the_clean_build(tmp_path, state, kinds, excused_by, kind, expected):
    clean = run_folder(tmp_path / "clean", "pass")
    outcome = judge_mutant(mutant(tmp_path, kind), clean, run_folder(tmp_path / "m", state, kinds, excused_by), 1, 9.0)
    assert outcome.state == expected, outcome
    if expected in ("caught", "false-alarm"):
        assert outcome.by and TEST in outcome.by[0] and "pass -> fail" in outcome.by[0]
    if expected == "excused":
        assert "QEMU-TCG-DIRTY-BITMAP" in outcome.why


def test_a_test_failing_on_the_clean_build_catches_only_with_new_evidence(tmp_path):
    clean = run_folder(tmp_path / "clean", "fail", ("threshold",))
    same = judge_mutant(mutant(tmp_path), clean, run_folder(tmp_path / "same", "fail", ("threshold",)), 1, 1.0)
    assert same.state == "missed"
    worse = judge_mutant(mutant(tmp_path), clean, run_folder(tmp_path / "worse", "fail", ("threshold", "lost-pages")),
                         1, 1.0)
    assert worse.state == "caught" and "new lost-pages" in worse.by[0]


def test_a_mutant_without_a_run_or_with_a_test_missing_is_undecided(tmp_path):
    clean = run_folder(tmp_path / "clean", "pass")
    assert judge_mutant(mutant(tmp_path), clean, tmp_path / "nothing", 2, 1.0).state == "undecided"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "junit.xml").write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest"/></testsuites>')
    (empty / "results.jsonl").write_text("")
    outcome = judge_mutant(mutant(tmp_path), clean, empty, 1, 1.0)
    assert outcome.state == "undecided" and "missing" in outcome.why


def test_the_rate_counts_every_real_mutant_and_false_alarms_apart():
    outcomes = [Outcome("clean", "clean", "none", "clean", ""), Outcome("a", "ram-not-sent", "", "caught", ""),
                Outcome("b", "final-sync", "", "missed", ""), Outcome("c", "negative-control", "", "false-alarm", ""),
                Outcome("d", "statistic-wrong", "", "undecided", "")]
    s = summary(outcomes)
    assert (s["mutants"], s["caught"], s["missed"], s["undecided"], s["false_alarms"]) == (3, 1, 1, 1, 1)
    assert s["detection_rate"] == pytest.approx(1 / 3, abs=1e-3)


def test_a_header_without_its_fields_is_one_line(tmp_path):
    bad = tmp_path / "01-x.patch"
    bad.write_text("Mutant: x\n--- a/f\n+++ b/f\n")
    with pytest.raises(ConfigError, match="lacks Breaks, Symptom, Class, Expect, Upstream"):
        read_mutant(bad)
    with pytest.raises(ConfigError, match="--only nope: no such mutant"):
        load_corpus(_corpus_with(tmp_path, "y"), ["nope"])


def _corpus_with(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir(exist_ok=True)
    (folder / f"01-{name}.patch").write_text(HEADER.format(id=name, kind="ram-not-sent"))
    return folder


def test_every_mutant_runs_on_the_pinned_stack_plus_its_own_patch(tmp_path):
    m = mutant(tmp_path)
    doc = lab_document(BASE_LAB, "mut-x", m.path)
    (name, spec), = doc["stacks"].items()
    assert name == "mut-x" and all(h["stack"] == "mut-x" for h in doc["hosts"])
    assert spec["patches"][-1] == str(m.path.resolve()) and "03bfc2188f06" in spec["patches"][0]


def test_the_shipped_corpus_parses_with_negative_controls():
    if not any(CORPUS.glob("*.patch")):
        pytest.fail(f"no mutant in {CORPUS}")
    corpus = load_corpus()
    assert len([m for m in corpus if not m.negative]) >= 20 and len([m for m in corpus if m.negative]) >= 2


def test_a_test_excused_on_the_clean_build_too_is_no_excuse_of_the_mutants(tmp_path):
    clean = run_folder(tmp_path / "clean", "excused", ("hypervisor-underreports",), "POSTCOPY-PAGE-FAULT-STALL")
    same = run_folder(tmp_path / "m", "excused", ("hypervisor-underreports",), "POSTCOPY-PAGE-FAULT-STALL")
    assert judge_mutant(mutant(tmp_path), clean, same, 1, 1.0).state == "missed"


def test_resume_keeps_decided_outcomes_and_runs_only_the_rest(tmp_path, monkeypatch):
    from lab.mutants import runner
    out, selection = tmp_path / "out", ["suites/live_migration", "--repeat", "1"]
    run_folder(out / "clean", "pass")
    done, left = mutant(tmp_path, "ram-not-sent"), mutant(tmp_path, "final-sync")
    earlier = [Outcome("clean", "clean", "none", "clean", "all passed", wall_s=100.0),
               Outcome(done.id, done.kind, done.expect, "caught", "1 test(s) worse", ["t"], 200.0),
               Outcome(left.id, left.kind, left.expect, "undecided", "cut off", wall_s=5.0)]
    runner._write(out, earlier, selection)
    ran = []

    def run_one(name, patch, base, out_dir, sel, say, stack_of=""):  # stands in for build + lab + selection: the order
        ran.append(name)
        shutil.rmtree(out_dir / name, ignore_errors=True)  # as the real one does
        run_folder(out_dir / name, "fail", ("lost-pages",))
        return 1, 50.0

    monkeypatch.setattr(runner, "_run_one", run_one)
    result = runner.run_mutants([done, left], selection, out, lambda line: None, resume=True)
    assert ran == [left.id]  # neither the clean build nor the decided mutant again
    assert [o["state"] for o in result["outcomes"]] == ["clean", "caught", "caught"]
    assert result["wall_s"] == 350.0  # the earlier part's time counts
    with pytest.raises(ConfigError, match="not this one"):
        runner.run_mutants([left], ["suites/faults"], out, lambda line: None, resume=True)
    # --again: a decided mutant run anew (after a harness fix), its outcome replaced in place, the others kept.
    ran.clear()
    again = runner.run_mutants([done, left], selection, out, lambda line: None, resume=True, again=(done.id,))
    assert ran == [done.id] and [o["id"] for o in again["outcomes"]] == ["clean", done.id, left.id]
    assert again["outcomes"][1]["wall_s"] == 50.0 and again["wall_s"] == 200.0
    ran.clear()
    anew = runner.run_mutants([done, left], selection, out, lambda line: None, resume=True, again=("clean",))
    assert ran == ["clean"] and [o["state"] for o in anew["outcomes"]] == ["false-alarm", "caught", "caught"]
    with pytest.raises(ConfigError, match="no such mutant"):
        runner.run_mutants([done, left], selection, out, lambda line: None, resume=True, again=("nope",))
    with pytest.raises(ConfigError, match="goes with --resume"):
        runner.run_mutants([done, left], selection, out, lambda line: None, again=(done.id,))


def test_a_catch_by_verdicts_alone_counts_only_when_it_repeats(tmp_path, monkeypatch):
    """Seen: cancel-leaves-disks-inactive "caught" by the tunnelled move's hypervisor downtime, 152 ms against 150,
    which that mutant cannot change. Its tests run again on the same stack; a catch that does not repeat is undecided."""
    from lab.mutants import runner
    out, selection = tmp_path / "out", ["suites/live_migration", "suites/faults", "-m", "not slow", "--maxfail", "1"]
    run_folder(out / "clean", "pass")
    noisy, real = mutant(tmp_path, "ram-not-sent"), mutant(tmp_path, "final-sync")
    runs = []

    def run_one(name, patch, base, out_dir, sel, say, stack_of=""):
        runs.append((name, sel, stack_of))
        shutil.rmtree(out_dir / name, ignore_errors=True)
        repeats = name.startswith(real.id)
        if name == "clean" or (name.endswith(".again") and not repeats):
            run_folder(out_dir / name, "pass")
        else:
            run_folder(out_dir / name, "fail", ("threshold",))
        return 1, 10.0

    monkeypatch.setattr(runner, "_run_one", run_one)
    result = runner.run_mutants([noisy, real], selection, out, lambda line: None)
    states = {o["id"]: o for o in result["outcomes"]}
    assert states[noisy.id]["state"] == "undecided" and "not in a second run" in states[noisy.id]["why"]
    assert states[real.id]["state"] == "caught" and "confirmed by a second run" in states[real.id]["why"]
    assert states[real.id]["wall_s"] == 20.0
    again = [r for r in runs if r[0].endswith(".again")]
    assert again[0] == (f"{noisy.id}.again", [TEST, "-m", "not slow", "--maxfail", "1"], noisy.id)
    # A catch with any other new finding kind needs no second run.
    clean = out / "clean"
    lost = judge_mutant(noisy, clean, run_folder(tmp_path / "lost", "fail", ("threshold", "lost-pages")), 1, 1.0)
    assert lost.state == "caught" and lost.shaky == []


def test_a_selections_options_are_kept_without_its_paths(tmp_path, monkeypatch):
    from lab.mutants.runner import options_of
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    assert options_of(["suites", "-m", "not slow", "--repeat", "1", "-k", "dirty", "--maxfail=1", "-rfEs"]) == \
        ["-m", "not slow", "--repeat", "1", "-k", "dirty", "--maxfail=1", "-rfEs"]
    assert options_of(["-x", "suites"]) == ["-x"]  # a path after a flag is not its value


def test_every_mutant_is_judged_by_the_clean_builds_calibration(tmp_path, monkeypatch):
    from lab.migration.calibrate import calibrated
    from lab.results.gate_run import pin_calibration
    from tests.test_calibration_model import TCG
    monkeypatch.delenv("LAB_CALIBRATION", raising=False)
    clean = run_folder(tmp_path / "clean", "pass")
    with (clean / "results.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "live-migration-summary", "calibration": TCG.as_record()}) + "\n")
    monkeypatch.setenv("LAB_CALIBRATION", "")  # restored after the test, whatever pin_calibration sets
    pin_calibration(clean, tmp_path, print)
    # Whatever pair or stack a mutant's lab has, its limits follow from the clean build's figures.
    assert calibrated(None, None, None, None, print) == TCG
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(LabError, match="not a calibration file"):
        calibrated(None, None, None, None, print)

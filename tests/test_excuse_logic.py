"""The known-defect excuse on a real run: a harness bug planted in the dirty scenario fails the test,
even where the registered defect's evidence (lost pages on TCG QEMU < 9.0) is there too.

The scenario runs in a nested pytest on a lab of its own, with a plugin that plants the bug
(tests/planted/wrong_host_bug.py: the guest checked against the host it left). Its migration-failed
finding is not one QEMU-TCG-DIRTY-BITMAP explains, so the verdict is fail, never XFAIL.
"""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.labtools import lab_cli, write_lab_config

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = "precopy-dirty-4MiBs-link-16MiBs"


@pytest.mark.lab
def test_a_planted_harness_bug_in_a_dirty_scenario_fails_instead_of_being_excused(tmp_path):
    config = write_lab_config(tmp_path, "kvmplt", 9)
    out = tmp_path / "run"
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.planted.wrong_host_bug", "-p", "no:randomly",
                               "--lab-config", str(config), "--report-dir", str(out), "--repeat", "1", "-rfEsxX",
                               f"suites/live_migration/test_live_migration.py::test_measured_migration[{SCENARIO}]"],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        lab_cli(config, "down")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    case = next(ET.parse(out / "junit.xml").iter("testcase"))
    failure = case.find("failure")
    assert failure is not None and case.find("skipped") is None, ET.tostring(case)[:2000]
    summary = next(json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()
                   if json.loads(line).get("kind") == "live-migration-summary")
    verdict = summary["verdict"]
    assert verdict["state"] == "fail" and verdict["defect"] is None, verdict
    assert any(f["kind"] == "migration-failed" and "expected only" in f["text"] for f in verdict["findings"]), verdict
    # Where the defect's own evidence came too (the usual case on TCG QEMU 7.2), the verdict says what it
    # explained and what no defect did.
    if any(f["kind"] == "lost-pages" for f in verdict["findings"]):
        assert "explained by no known defect of their move: migration-failed" in verdict["why"], verdict

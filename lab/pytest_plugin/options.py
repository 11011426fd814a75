"""Command-line options and the per-run state kept in pytest's config.stash.

The controller picks the run id (from LAB_RUN_ID or a new one) and hands it to
its xdist workers, so every process of a run writes to one report folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.config.lab import BACKENDS, LabConfig, load_lab_config
from lab.results.records import REPORTS, new_run_id


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    report_dir: Path
    controller_pid: int  # the pytest process that owns this run (its workers report to it)


RUN = pytest.StashKey[RunInfo]()


def pytest_addoption(parser):
    group = parser.getgroup("kvm-lab", "KVM acceptance lab")
    group.addoption("--lab-config", metavar="PATH", help="lab.yaml to use (default: $LAB_CONFIG or the repo's lab.yaml)")
    group.addoption("--lab", choices=BACKENDS, help="lab backend, overriding lab.yaml")
    group.addoption("--keep-lab", action="store_true", help="leave the lab up after the run")
    group.addoption("--report-dir", metavar="DIR", help="where this run's records go (default: reports/<run-id>)")
    group.addoption("--thresholds", metavar="PATH", help="thresholds.yaml to use (default: the repo's)")
    group.addoption("--repeat", type=int, default=3, metavar="N",
                    help="repetitions of each measured scenario (default 3)")


def is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def run_info(config: pytest.Config) -> RunInfo:
    return config.stash[RUN]


def lab_config_of(config: pytest.Config) -> LabConfig:
    """lab.yaml as chosen by --lab-config / $LAB_CONFIG, with --lab applied."""
    lab_config = load_lab_config(config.getoption("lab_config"))
    backend = config.getoption("lab")
    return lab_config.model_copy(update={"backend": backend}) if backend else lab_config


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if is_controller(config):
        # Popped, so that pytest runs nested inside this one's tests get run ids (and leases) of their own:
        # a nested run that inherited ours would believe it owns the lab and take it down.
        run_id = os.environ.pop("LAB_RUN_ID", "") or new_run_id()
        controller = os.getpid()
    else:
        run_id = config.workerinput["kvm_run_id"]
        controller = config.workerinput["kvm_controller_pid"]
    report_dir = Path(config.getoption("report_dir") or REPORTS / run_id)
    config.stash[RUN] = RunInfo(run_id, report_dir, controller)
    if is_controller(config) and not config.option.xmlpath and not config.option.collectonly:
        report_dir.mkdir(parents=True, exist_ok=True)
        config.option.xmlpath = str(report_dir / "junit.xml")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    info = run_info(node.config)
    node.workerinput["kvm_run_id"] = info.run_id
    node.workerinput["kvm_controller_pid"] = info.controller_pid

"""The lab around a pytest run: it comes up once (lazily, on the first test that needs it, under
the backend's file lock so every xdist worker finds it up), each run holds a lease on it, and
the run that brought it up takes it down at the end, unless another live run still uses it
or --keep-lab is given."""
from __future__ import annotations

import pytest

from lab.backends import get_backend
from lab.backends.base import quiet
from lab.config.lab import LabConfig
from lab.config.thresholds import load_thresholds
from lab.errors import LabError
from lab.pytest_plugin.options import is_controller, lab_config_of, run_info
from lab.runtime.lab import Lab
from lab.runtime.layout import LabLayout
from lab.results.report import build_report, write_lab_facts
from lab.runtime.pairs import release_all
from lab.runtime.state import LabState, live_users


def take_lease(config: pytest.Config, lab_config: LabConfig) -> None:
    """Record that this run uses the lab, so another run finishing does not take it down under us."""
    info = run_info(config)
    leases = LabLayout(lab_config.name).leases
    leases.mkdir(parents=True, exist_ok=True)
    (leases / info.run_id).write_text(str(info.controller_pid))


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        lab_config = lab_config_of(config)
        state = LabState.load(lab_config.name)
    except LabError as exc:
        return [f"kvm-lab: {exc}"]
    lines = [f"kvm-lab: backend {lab_config.backend}, config {lab_config.source}, run {run_info(config).run_id}"]
    if state and state.ready:
        lines.append(f"kvm-lab: up; accelerator {state.accelerator} ({state.accelerator_reason})")
        for host in Lab.from_state(lab_config, state).describe()["hosts"]:
            lines.append(f"kvm-lab: {host['name']} libvirt {host.get('libvirt_version')} "
                         f"QEMU {host.get('qemu_version')} kernel {host.get('kernel')}")
    else:
        lines.append(f"kvm-lab: not up yet; comes up on first use (accelerator {lab_config.accelerator})")
    return lines


def keep_lab_facts(config: pytest.Config) -> None:
    """lab.json beside the records (backend, accelerator and why, hosts, heartbeat period, thresholds),
    read while the lab is still up: the report shows them. Never fails the run."""
    info = run_info(config)
    try:
        lab_config = lab_config_of(config)
        facts = {"run_id": info.run_id, "name": lab_config.name, "backend": lab_config.backend,
                 "lab_config": str(lab_config.source), "heartbeat_period_ms": lab_config.guest.heartbeat_us / 1000,
                 "thresholds": str(load_thresholds(config.getoption("thresholds")).source)}
        state = LabState.load(lab_config.name)
        if state is not None and state.ready:
            facts.update(Lab.from_state(lab_config, state).describe(versions=False))
        write_lab_facts(info.report_dir, facts)
    except Exception as exc:  # noqa: BLE001 - the report's facts never fail the run
        print(f"\nkvm-lab: lab facts for the report not kept: {exc}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    release_all()
    config = session.config
    if is_controller(config) and not config.option.collectonly and run_info(config).report_dir.exists():
        keep_lab_facts(config)
    if not is_controller(config) or config.getoption("keep_lab") or config.option.collectonly:
        return
    run_id = run_info(config).run_id
    try:
        lab_config = lab_config_of(config)
        (LabLayout(lab_config.name).leases / run_id).unlink(missing_ok=True)
        state = LabState.load(lab_config.name)
        if state is None or state.owner_run != run_id:
            return
        others = live_users(lab_config.name, excluding=run_id)
        if others:
            state.owner_run = others[0]  # the last run to finish takes the lab down
            state.save()
            print(f"\nkvm-lab: leaving lab {lab_config.name} up: runs {', '.join(others)} still use it")
            return
        get_backend(lab_config).down(quiet)
    except LabError as exc:
        print(f"\nkvm-lab: teardown failed: {exc}")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    report_dir = run_info(config).report_dir
    if not is_controller(config) or config.option.collectonly or not report_dir.exists():
        return
    try:  # after junit.xml is written; a report that cannot be built never fails the run
        terminalreporter.write_line(f"kvm-lab: report {build_report(report_dir)}")
    except Exception as exc:  # noqa: BLE001 - any failure of the report is one line, never the run's
        terminalreporter.write_line(f"kvm-lab: report in {report_dir} (HTML report not written: {exc})")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


PHASE_REPORTS = pytest.StashKey[dict]()


def failed(item: pytest.Item) -> bool:
    """True when the test's setup or call failed (for fixtures that keep evidence at teardown)."""
    reports = item.stash.get(PHASE_REPORTS, {})
    return any(r.failed for w, r in reports.items() if w in ("setup", "call"))

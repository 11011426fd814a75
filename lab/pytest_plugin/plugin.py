"""pytest plugin: the lab comes up once per run (also under -n auto), fixtures for hosts and guests.

The lab is brought up lazily by the first test that needs it; the backend's
file lock makes every other xdist worker wait and then find it up (the
FileLock recipe from pytest-xdist's docs). The controller owns teardown: it
takes the lab down at the end of the run if this run brought it up, unless
--keep-lab is given.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from lab.backends import get_backend
from lab.config.lab import LabConfig, load_lab_config
from lab.errors import LabError
from lab.util.locks import MeasurementLock
from lab.results.records import REPORTS, new_run_id
from lab.runtime.state import STATE_ROOT, LabState


def pytest_addoption(parser):
    group = parser.getgroup("kvm-lab", "KVM acceptance lab")
    group.addoption("--lab-config", metavar="PATH", help="lab.yaml to use (default: $LAB_CONFIG or the repo's lab.yaml)")
    group.addoption("--lab", choices=("embedded", "vagrant", "static"), help="lab backend, overriding lab.yaml")
    group.addoption("--keep-lab", action="store_true", help="leave the lab up after the run")
    group.addoption("--report-dir", metavar="DIR", help="where this run's records go (default: reports/<run-id>)")
    group.addoption("--thresholds", metavar="PATH", help="thresholds.yaml to use (default: the repo's)")
    group.addoption("--repeat", type=int, default=3, metavar="N",
                    help="repetitions of each measured scenario (default 3); verdicts use the p95")


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_configure(config):
    if _is_controller(config):
        # Popped, so that pytest runs nested inside this one's tests get run ids (and leases) of their own:
        # a nested run that inherited ours would believe it owns the lab and take it down.
        config.kvm_run_id = os.environ.pop("LAB_RUN_ID", "") or new_run_id()
    else:
        config.kvm_run_id = config.workerinput["kvm_run_id"]
    report_dir = Path(config.getoption("report_dir") or REPORTS / config.kvm_run_id)
    config.kvm_report_dir = report_dir
    if _is_controller(config) and not config.option.xmlpath and not config.option.collectonly:
        report_dir.mkdir(parents=True, exist_ok=True)
        config.option.xmlpath = str(report_dir / "junit.xml")


def pytest_configure_node(node):
    node.workerinput["kvm_run_id"] = node.config.kvm_run_id
    node.workerinput["kvm_controller_pid"] = os.getpid()


def _controller_pid(config) -> int:
    return os.getpid() if _is_controller(config) else config.workerinput["kvm_controller_pid"]


def _lease_dir(lab_config: LabConfig) -> Path:
    from lab.runtime.state import lab_dir

    return lab_dir(lab_config.name) / "users"


def _take_lease(config, lab_config: LabConfig) -> None:
    """Record that this run uses the lab, so another run finishing does not take it down under us."""
    leases = _lease_dir(lab_config)
    leases.mkdir(parents=True, exist_ok=True)
    (leases / config.kvm_run_id).write_text(str(_controller_pid(config)))


def _other_live_users(lab_config: LabConfig, run_id: str) -> list[str]:
    from lab.runtime.state import live_users

    return live_users(lab_config.name, excluding=run_id)


def _lab_config(config) -> LabConfig:
    lab_config = load_lab_config(config.getoption("lab_config"))
    backend = config.getoption("lab")
    return dataclasses.replace(lab_config, backend=backend) if backend else lab_config


def pytest_report_header(config):
    try:
        lab_config = _lab_config(config)
    except LabError as exc:
        return [f"kvm-lab: {exc}"]
    state = LabState.load(lab_config.name)
    lines = [f"kvm-lab: backend {lab_config.backend}, config {lab_config.source}, run {config.kvm_run_id}"]
    if state and state.ready:
        lines.append(f"kvm-lab: up; accelerator {state.accelerator} ({state.accelerator_reason})")
        try:
            from lab.runtime.lab import Lab

            for host in Lab.from_state(lab_config, state).describe()["hosts"]:
                lines.append(f"kvm-lab: {host['name']} libvirt {host.get('libvirt_version')} "
                             f"QEMU {host.get('qemu_version')} kernel {host.get('kernel')}")
        except LabError as exc:
            lines.append(f"kvm-lab: versions unavailable: {exc}")
    else:
        lines.append(f"kvm-lab: not up yet; comes up on first use (accelerator {lab_config.accelerator})")
    return lines


def pytest_sessionfinish(session, exitstatus):
    from lab.runtime.pairs import release_all

    release_all()
    config = session.config
    if not _is_controller(config) or config.getoption("keep_lab") or config.option.collectonly:
        return
    try:
        lab_config = _lab_config(config)
        (_lease_dir(lab_config) / config.kvm_run_id).unlink(missing_ok=True)
        state = LabState.load(lab_config.name)
        if state is None or state.owner_run != config.kvm_run_id:
            return
        others = _other_live_users(lab_config, config.kvm_run_id)
        if others:
            state.owner_run = others[0]  # the last run to finish takes the lab down
            state.save()
            print(f"\nkvm-lab: leaving lab {lab_config.name} up: runs {', '.join(others)} still use it")
            return
        get_backend(lab_config).down(lambda _msg: None)
    except LabError as exc:
        print(f"\nkvm-lab: teardown failed: {exc}")


def pytest_terminal_summary(terminalreporter, config):
    if _is_controller(config) and config.kvm_report_dir.exists():
        terminalreporter.write_line(f"kvm-lab: report in {config.kvm_report_dir}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# -- fixtures -------------------------------------------------------------

@pytest.fixture(scope="session")
def lab_config(pytestconfig) -> LabConfig:
    try:
        return _lab_config(pytestconfig)
    except LabError as exc:
        pytest.fail(f"kvm-lab: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def lab(pytestconfig, lab_config):
    """The running lab (brought up on first use, once for all workers), as this worker's host pair sees it."""
    from lab.runtime.lab import Lab

    from lab.runtime.pairs import claim_pair

    try:
        get_backend(lab_config).up(lambda _msg: None, owner_run=pytestconfig.kvm_run_id)
        _take_lease(pytestconfig, lab_config)
        whole = Lab.load(lab_config)
        # A lab with several host pairs: this worker takes one of its own, so workers run side by side.
        claim = claim_pair(whole, os.environ.get("PYTEST_XDIST_WORKER"))
        return whole.pair_view(whole.host(claim.src), whole.host(claim.dst))
    except LabError as exc:
        # A failure, not pytest.exit: exiting inside an xdist worker crashes the run.
        pytest.fail(f"kvm-lab: lab did not come up: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def hosts(lab):
    return lab.hosts


@pytest.fixture(scope="session")
def src_host(lab):
    return lab.hosts[0]


@pytest.fixture(scope="session")
def dst_host(lab):
    return lab.hosts[1]


@pytest.fixture(scope="session")
def thresholds(pytestconfig):
    from lab.config.thresholds import load_thresholds

    try:
        return load_thresholds(pytestconfig.getoption("thresholds"))
    except LabError as exc:
        pytest.fail(f"kvm-lab: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def repeat(pytestconfig) -> int:
    count = pytestconfig.getoption("repeat")
    if count < 1:
        pytest.fail("kvm-lab: --repeat: must be at least 1", pytrace=False)
    return count


@pytest.fixture(scope="session")
def host_versions(lab) -> dict:
    """QEMU, libvirt and kernel versions of every host, for the records."""
    from lab.runtime.lab import host_versions as versions_of

    return {h.name: versions_of(h) for h in lab.hosts}


@pytest.fixture
def record(request, report_dir):
    """Append a typed record to results.jsonl; `figures` also go out as JUnit properties."""
    from lab.results.records import append_record

    def write(doc: dict, figures: dict | None = None) -> None:
        append_record(report_dir, {"test": request.node.nodeid, **doc})
        for key, value in (figures or {}).items():
            request.node.user_properties.append((key, value))

    return write


@pytest.fixture(scope="session")
def report_dir(pytestconfig) -> Path:
    path = pytestconfig.kvm_report_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def _measurement_lock() -> MeasurementLock:
    # Machine-wide: guests of any lab on this machine share its two cores.
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    return MeasurementLock(STATE_ROOT)


@pytest.fixture
def shared_lab(_measurement_lock):
    """Held by every test that runs guests: it may share the machine with other such tests."""
    with _measurement_lock.shared():
        yield


@pytest.fixture
def measurement_lock(_measurement_lock):
    """Held by tests that assert timing: no other test's guests run meanwhile."""
    with _measurement_lock.exclusive():
        yield


@pytest.fixture
def test_report_dir(request, report_dir) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.[]" else "_" for c in request.node.nodeid)[-150:]
    return report_dir / "tests" / safe


@pytest.fixture
def guest_factory(request, lab, test_report_dir):
    """Make guests on demand; all are removed after the test, logs kept if it failed."""
    from lab.guest.domain import create_guest, remove_guest

    made = []

    def make(host=None, wait=True, **kwargs):
        # Waiting happens after the guest is on the list, so a guest that never answers keeps its logs.
        guest = create_guest(lab, host or lab.hosts[0], wait=False, **kwargs)
        made.append(guest)
        if wait and kwargs.get("start", True):
            guest.wait_ready()
        return guest

    yield make
    failed = any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
                 for w in ("setup", "call"))
    for guest in made:
        if failed:
            keep_guest_logs(lab, guest, test_report_dir)
        remove_guest(lab, guest)


@pytest.fixture
def guest(request, guest_factory, shared_lab):
    """A fresh running guest on the first host, unique name, removed after the test."""
    return guest_factory()


def keep_guest_logs(lab, guest, dest: Path) -> None:
    """Copy the guest's serial and QEMU logs from every host into the test's report folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for host in lab.hosts:
        for log in (f"/var/log/libvirt/qemu/{guest.name}.serial", f"/var/log/libvirt/qemu/{guest.name}.log"):
            proc = host.run(f"cat {log}", check=False, timeout=20)
            if proc.returncode == 0:
                (dest / f"{host.name}-{Path(log).name}").write_text(proc.stdout)



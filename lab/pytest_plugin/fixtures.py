"""Fixtures the suites use: the lab (this worker's host pair), hosts, thresholds, guests that are
removed after the test (their logs kept when it failed), records, and the measurement lock."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.backends import get_backend
from lab.config.lab import LabConfig
from lab.config.thresholds import load_thresholds
from lab.errors import LabError
from lab.guest.domain import create_guest, remove_guest
from lab.migration.calibrate import calibrated
from lab.pytest_plugin.lifecycle import failed, take_lease
from lab.pytest_plugin.options import lab_config_of, run_info
from lab.results.evidence import collect
from lab.results.records import append_record
from lab.results.verdicts import Registry, Verdict, load_registry
from lab.runtime.lab import Lab, host_versions as versions_of
from lab.runtime.layout import STATE_ROOT
from lab.runtime.pairs import claim_pair
from lab.util.locks import MeasurementLock
from lab.util.progress import StatusLine


@pytest.fixture(scope="session")
def lab_config(pytestconfig) -> LabConfig:
    try:
        return lab_config_of(pytestconfig)
    except LabError as exc:
        pytest.fail(f"kvm-lab: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def lab(pytestconfig, lab_config) -> Lab:
    """The running lab (brought up on first use, once for all workers), as this worker's host pair sees it."""
    try:
        # A lab already up says nothing; one coming up (stacks, Vagrant VMs) shows its steps past the capture.
        with StatusLine("kvm-lab up", quiet_for_s=5) as progress:
            get_backend(lab_config).up(progress, owner_run=run_info(pytestconfig).run_id)
        take_lease(pytestconfig, lab_config)
        whole = Lab.load(lab_config)
        # A lab with several host pairs: this worker takes one of its own, so workers run side by side.
        claim = claim_pair(whole.config.name, whole.pairs, whole.layout.pairs, os.environ.get("PYTEST_XDIST_WORKER"))
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
    return {h.name: versions_of(h) for h in lab.hosts}


@pytest.fixture(scope="session")
def known_defects() -> Registry:
    """The registry of known defects (known_defects.yaml, or $LAB_KNOWN_DEFECTS)."""
    try:
        return load_registry()
    except LabError as exc:
        pytest.fail(f"kvm-lab: {exc}", pytrace=False)


@pytest.fixture
def settle(request):
    """End a test by its computed verdict: pass; xfail "excused by KNOWN-ID ..." (a state of its own in
    JUnit's properties and results.jsonl, never a pass); or fail with every finding."""
    def apply(outcome: Verdict) -> None:
        request.node.user_properties.append(("verdict", outcome.state))
        if outcome.defect:
            request.node.user_properties.append(("excused_by", outcome.defect.id))
        lines = "\n".join(f"[{f.kind.value}] {f.text}" for f in outcome.findings)
        if outcome.state == "excused":
            pytest.xfail(f"{outcome.why}\n{lines}")
        if outcome.state == "fail":
            pytest.fail(f"{outcome.why}\n{lines}", pytrace=False)

    return apply


@pytest.fixture(scope="session")
def report_dir(pytestconfig) -> Path:
    path = run_info(pytestconfig).report_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def record(request, report_dir):
    """Append a typed record to results.jsonl; `figures` also go out as JUnit properties."""
    def write(doc: dict, figures: dict | None = None) -> None:
        append_record(report_dir, {"test": request.node.nodeid, **doc})
        for key, value in (figures or {}).items():
            request.node.user_properties.append((key, value))

    return write


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
def calibration(lab, thresholds, measurement_lock):
    """The first host pair's calibration (lab/calibration/), which the model's limits follow from: cached, or
    measured now, before the test's own guests exist. None for a thresholds file with hand-set limits."""
    if thresholds.model is None:
        return None
    try:
        with StatusLine("kvm-lab calibrate", quiet_for_s=5) as progress:
            return calibrated(lab, lab.hosts[0], lab.hosts[1], thresholds.tolerance, progress)
    except LabError as exc:
        pytest.fail(f"kvm-lab: {exc}", pytrace=False)


@pytest.fixture
def test_report_dir(request, report_dir) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.[]" else "_" for c in request.node.nodeid)[-150:]
    return report_dir / "tests" / safe


@pytest.fixture
def keep_evidence(request, test_report_dir):
    """keep_evidence(lab, guest_name, always=False) at teardown: the guest's logs (every host's) go into the test's
    report folder when the test failed, or when `always`."""
    def keep(lab: Lab, name: str, always: bool = False) -> None:
        if always or failed(request.node):
            collect(lab, name, test_report_dir)

    return keep


@pytest.fixture
def guest_factory(lab, keep_evidence):
    """Make guests on demand; all are removed after the test, logs kept if it failed."""
    made = []

    def make(host=None, wait=True, **kwargs):
        # Waiting happens after the guest is on the list, so a guest that never answers keeps its logs.
        guest = create_guest(lab, host or lab.hosts[0], wait=False, **kwargs)
        made.append(guest)
        if wait and kwargs.get("start", True):
            guest.wait_ready()
        return guest

    yield make
    for guest in made:
        keep_evidence(lab, guest.name)
        remove_guest(lab, guest)


@pytest.fixture
def guest(request, guest_factory, shared_lab):
    """A fresh running guest on the first host, unique name, removed after the test."""
    return guest_factory()

"""Fixtures of the harness's tests: a lab of a module's own on the pinned stack (tests/labtools.py), and the
preflight break tests' labs (tests/preflight_tools.py), each up for one module."""
from __future__ import annotations

import pytest

from lab.guest.domain import create_guest, remove_guest
from tests.labtools import own_lab
from tests.preflight_tools import pf_lab, two_stacks_lab


@pytest.fixture(scope="module")
def pinned_lab(request, tmp_path_factory):
    """Two hosts on the pinned stack for the tests of one module that migrate (the module's PINNED_LAB gives
    its name and subnet octet: xdist runs modules side by side). The module must be one xdist group: a fixture of
    module scope is per worker, and two workers would make, and take down, the same lab."""
    name, octet = request.module.PINNED_LAB
    with own_lab(tmp_path_factory.mktemp(name), name, octet) as made:
        yield made


@pytest.fixture
def pinned_guest(pinned_lab, shared_lab, keep_evidence):
    """A fresh running guest on the pinned lab's first host; its logs are kept when the test failed."""
    guest = create_guest(pinned_lab, pinned_lab.hosts[0], wait=False)
    ready = False
    try:
        guest.wait_ready()
        ready = True
        yield guest
    finally:
        keep_evidence(pinned_lab, guest.name, always=not ready)
        remove_guest(pinned_lab, guest)


@pytest.fixture(scope="module")
def pf(tmp_path_factory):
    with pf_lab(tmp_path_factory.mktemp("pf")) as made:
        yield made


@pytest.fixture(scope="module")
def two_stacks(tmp_path_factory):
    with two_stacks_lab(tmp_path_factory.mktemp("pfs")) as lab:
        yield lab


@pytest.fixture
def make_guest(pf):
    lab, _ = pf
    made = []

    def make(**kwargs):
        guest = create_guest(lab, lab.hosts[0], **kwargs)
        made.append(guest)
        return guest

    yield make
    for guest in made:
        remove_guest(lab, guest)


# Fixtures that need a lab up: a test using one is marked `lab` (make check runs the tests without that mark).
LAB_FIXTURES = {"lab", "hosts", "src_host", "dst_host", "guest", "guest_factory", "pinned_lab", "pinned_guest", "pf",
                "two_stacks", "make_guest", "shared_lab", "measurement_lock", "keep_evidence"}
TESTS_DIR = __file__.rsplit("/", 1)[0]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(TESTS_DIR) and LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)

"""Fixtures of the preflight break tests: the labs of tests/preflight_tools.py, up for one module."""
from __future__ import annotations

import pytest

from lab.guest.domain import create_guest, remove_guest
from tests.preflight_tools import pf_lab, two_stacks_lab


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

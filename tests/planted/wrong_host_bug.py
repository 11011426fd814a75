"""A harness bug planted on purpose (a pytest plugin, loaded with `-p tests.planted.wrong_host_bug` by
tests/test_excuse_logic.py only): the inspection after a migration checks the guest against the wrong
host (the one it left), so every migration "fails". The real parts cannot be made to produce a harness
bug; this is the fake that provokes one, to show that a known defect's excuse does not cover it. It acts
whatever became of the guest (a disk or memory check would be skipped when the lost pages crash it).
"""
from __future__ import annotations

from functools import wraps

import lab.migration.integrity as integrity

_real = integrity.inspect


@wraps(_real)
def inspect(guest, before, hosts, expected_host, disk_mib: int = 4):
    other = next(h for h in hosts if h.name != expected_host.name)
    return _real(guest, before, hosts, other, disk_mib)


integrity.inspect = inspect  # before the suites import it by name

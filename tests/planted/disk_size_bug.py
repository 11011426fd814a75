"""A harness bug planted on purpose (a pytest plugin, loaded with `-p tests.planted.disk_size_bug` by
tests/test_excuse_logic.py only): the disk fingerprint before a migration is taken over 3 MiB while the
check after it reads 4, so every guest's disk "changes". The real parts cannot be made to produce a
harness bug; this is the fake that provokes one, to show that a known defect's excuse does not cover it.
"""
from __future__ import annotations

from functools import wraps

import lab.migration.integrity as integrity

_real = integrity.take_fingerprint


@wraps(_real)
def take_fingerprint(guest, seed: int = 1234, fill_mib: int = 32, disk_mib: int = 4):
    return _real(guest, seed, fill_mib, disk_mib - 1)


integrity.take_fingerprint = take_fingerprint  # before the suites import it by name

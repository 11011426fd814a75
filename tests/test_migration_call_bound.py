"""A migration call that never returns after its abort is given up, said so, and leaves the shared connection.

A fake domain stands in for what the real parts do only with a defect: libvirt waits for QEMU's migration to
end, and a QEMU whose migration never reaches "cancelled" keeps migrateToURI3 blocked for ever (the mutant
cancel-never-reaches-cancelled does it for real, docs/mutants.md). Everything else is lab/migration/live.py's own.
"""
from __future__ import annotations

import threading

import libvirt
import pytest

from lab.errors import LabError
from lab.migration import live
from lab.migration.live import MigrationParams, migrate


class StuckDomain:
    def __init__(self):
        self.released = threading.Event()
        self.aborts = 0

    def migrateToURI3(self, *_args):  # noqa: N802 (libvirt's name)
        self.released.wait()  # QEMU's migration never ends

    def abortJob(self):  # noqa: N802
        self.aborts += 1  # accepted, and nothing ends

    def jobStats(self, *_args):  # noqa: N802
        return {"memory_iteration": 3, "memory_remaining": 2**20}

    def migrateSetMaxDowntime(self, *_args):  # noqa: N802
        pass


class Conn:
    def __init__(self, dom):
        self.dom = dom

    def lookupByName(self, _name):  # noqa: N802
        return self.dom

    def domainEventRegisterAny(self, *_args):  # noqa: N802
        return 1

    def domainEventDeregisterAny(self, *_args):  # noqa: N802
        pass

    def close(self):
        pass


@pytest.fixture(autouse=True)
def no_monitor_events(monkeypatch):
    """The fake connection has no QEMU monitor to listen to (libvirt_qemu needs a real one)."""
    monkeypatch.setattr(live, "_watch_qemu_events", lambda *_args: [])


class Host:
    def __init__(self, name, dom):
        self.name, self.libvirt_uri, self.conn, self.forgotten = name, f"test:///{name}", Conn(dom), 0

    def connect(self, fresh=False):
        return self.conn

    def forget_connection(self):
        self.forgotten += 1


def test_a_call_still_blocked_after_the_abort_is_given_up_and_its_connection_dropped(monkeypatch):
    monkeypatch.setattr(live, "ABORT_GRACE_S", 0.5)
    dom = StuckDomain()
    src, dst = Host("hv1", dom), Host("hv2", dom)
    try:
        result = migrate("g", src, dst, MigrationParams(timeout_s=0.3, migrate_uri="tcp://198.19.1.12"))
    finally:
        dom.released.set()
    assert result.call_hung and result.aborted and not result.ok and dom.aborts == 1
    assert "budget 0 s exceeded: aborted, and the migration call had not returned 0 s later: the job never ended" \
        in result.error, result.error
    assert src.forgotten == 1 and result.stats  # the stats read when the budget ran out, as evidence
    assert 0.8 <= result.wall_s < 5, result.wall_s


def test_a_call_that_returns_in_time_after_the_abort_is_no_hang(monkeypatch):
    monkeypatch.setattr(live, "ABORT_GRACE_S", 5)
    dom = StuckDomain()

    def abort():
        dom.aborts += 1
        threading.Timer(0.2, dom.released.set).start()  # the job ends shortly after the abort

    dom.abortJob = abort
    src, dst = Host("hv1", dom), Host("hv2", dom)
    original = dom.migrateToURI3

    def migrate_then_fail(*args):
        original(*args)
        raise libvirt.libvirtError("operation aborted: migration out job: canceled by client")

    dom.migrateToURI3 = migrate_then_fail
    result = migrate("g", src, dst, MigrationParams(timeout_s=0.3, migrate_uri="tcp://198.19.1.12"))
    assert not result.call_hung and result.aborted and src.forgotten == 0
    assert result.error.startswith("budget 0 s exceeded: aborted: "), result.error


def test_an_error_other_than_libvirts_in_the_call_reaches_the_caller():
    """The call runs in a thread: what it raises must not turn into a migration that "succeeded"."""
    dom = StuckDomain()

    def refuse(*_args):
        raise LabError("hv2: cannot connect")

    dom.migrateToURI3 = refuse
    with pytest.raises(LabError, match="cannot connect"):
        migrate("g", Host("hv1", dom), Host("hv2", dom), MigrationParams(timeout_s=5, migrate_uri="tcp://198.19.1.12"))


def test_a_connection_whose_close_never_returns_is_left_behind(monkeypatch):
    """libvirt 9.0's client deadlocked in close once (a fault test hung 14 min after the source libvirtd was
    killed); a fake connection stands in for that deadlock, which cannot be made on demand."""
    from lab.runtime import hosts
    monkeypatch.setattr(hosts, "CLOSE_WAIT_S", 0.2)
    stuck, steps = threading.Event(), []

    class Blocking:
        def close(self):
            steps.append("close")
            stuck.wait()  # never set: the deadlock

    assert hosts.close_connection(Blocking(), lambda: steps.append("deregister")) is False
    assert steps == ["deregister", "close"]  # the callbacks go first, on the same thread
    assert hosts.close_connection(Conn(None)) is True

"""The checks that a migration setting was really used fail when it was not, on real migrations.

Each breaks its precondition for real: the migrations here run without the setting (plain precopy, one
channel, no xbzrle; a guest dirtying at a quarter of the rate asked), and are judged as if it had been
asked. The same checks pass on the live suite's postcopy, multifd and xbzrle scenarios (suites/live_migration).
The migrations run on a lab of the module's own, on the stack the harness's tests pin (tests/labtools.py).
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from lab.migration.honoured import (ConnectionCounter, Observed, dirty_rate_before, settings_findings,
                                    statistics_findings)
from lab.migration.live import MigrationParams, migrate
from lab.results.verdicts import Kind

# One worker runs the module: its pinned lab is the module's (a second worker would make and take down the same one).
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("kvmset")]
PINNED_LAB = ("kvmset", 70)


def test_settings_a_plain_migration_did_not_use_are_findings(pinned_lab, pinned_guest):
    lab, guest = pinned_lab, pinned_guest
    src_host, dst_host = lab.hosts
    guest.agent("dirty", 2, 16)  # a quarter of the 8 MiB/s judged below
    rate = dirty_rate_before(guest, 2)  # on the source, as the live suite reads it
    # 8 MiB/s: the migration lasts seconds, so the counter's polls (an SSH command each, slower on a loaded
    # runner) see its connection; uncapped, a mostly-zero guest moved within one poll and counted 0 (CI, once).
    plain = MigrationParams(unsafe=lab.needs_unsafe("shared"), migrate_uri=f"tcp://{dst_host.address}",
                            bandwidth_mibs=8)
    result, counter = _migrate_counted(lab, guest, plain)
    observed = Observed(dirty_mibs_before=rate, migration_connections_max=counter.seen, qemu_polls=counter.qemu_polls)
    assert observed.migration_connections_max == 1, observed  # one channel, counted while it ran

    # As asked: nothing to say.
    assert settings_findings(plain, result, observed, dirty_mibs_asked=2) == []
    # Judged as if postcopy, multifd with 2 channels, xbzrle, a 2 MiB/s cap and 8 MiB/s of dirtying had been asked.
    asked = replace(plain, mode="postcopy", parallel_connections=2, compression="xbzrle", bandwidth_mibs=2,
                    tunnelled=True)
    found = settings_findings(asked, result, observed, dirty_mibs_asked=8)
    text = "\n".join(f.text for f in found)
    assert {f.kind for f in found} == {Kind.SETTING_IGNORED}, found
    assert "never switched to postcopy" in text
    assert "requested no page" in text  # a precopy job reports 0 postcopy requests
    assert "at most 1 connection(s)" in text and "make 3" in text
    assert "compression_pages" in text or "xbzrle-encoded" in text
    assert "below 80% of the 8 MiB/s asked" in text
    assert "over 1.5 times the cap of 2 MiB/s" in text  # moved at up to 8 MiB/s
    assert "tunnelled: the destination's QEMU took 1 TCP connection(s)" in text

    # QEMU's own figures against the guest's: as measured, they agree; a guest that had dirtied 100 times more,
    # over 100 times the memory (so that QEMU's per-period count could not saturate), is a wrong statistic seen from
    # the other side. (The same claim over the same 16 MiB is no finding: QEMU counts distinct pages per period.)
    iterations = result.stats.get("memory_iteration")
    assert result.dirty_rate_reported_mibs is not None and iterations >= 3, (result.dirty_rate_reported_mibs, iterations)
    assert statistics_findings(result, observed, 2, 16) == [], result.dirty_rate_reported_mibs
    assert statistics_findings(result, replace(observed, dirty_mibs_before=rate * 100), 2, 16) == []
    wrong = statistics_findings(result, replace(observed, dirty_mibs_before=rate * 100), 2, 1600)
    assert [f.kind for f in wrong] == [Kind.STATISTIC_WRONG] and "by more than a factor of 4" in wrong[0].text


def test_the_connection_counter_sees_a_short_multifd_migration(pinned_lab, pinned_guest):
    """An idle guest, uncapped, two multifd channels: the migration lasts a second or less, which the counter's
    former polls (an SSH command each) missed, reporting "at most 0 connection(s)" (issue 24). Its one
    command polling locally must see the main channel and both multifd channels."""
    lab, guest = pinned_lab, pinned_guest
    src_host, dst_host = lab.hosts
    params = MigrationParams(unsafe=lab.needs_unsafe("shared"), migrate_uri=f"tcp://{dst_host.address}",
                             parallel_connections=2)
    result, counter = _migrate_counted(lab, guest, params)
    assert counter.seen == 3, (counter.most, counter.errors, result.stats.get("time_elapsed"))
    assert settings_findings(params, result, Observed(migration_connections_max=counter.seen)) == []


def test_a_tunnelled_migration_shows_no_qemu_to_qemu_connection(pinned_lab, pinned_guest):
    """Tunnelled through libvirtd, the destination's QEMU has no TCP connection on the migration ports, and the
    counter saw that QEMU while it ran: no finding. (The plain migration above, judged as tunnelled, has one.)"""
    lab, guest = pinned_lab, pinned_guest
    params = MigrationParams(unsafe=lab.needs_unsafe("shared"), tunnelled=True, bandwidth_mibs=16)
    result, counter = _migrate_counted(lab, guest, params)
    observed = Observed(migration_connections_max=counter.seen, qemu_polls=counter.qemu_polls)
    assert counter.qemu_polls and counter.most == 0, (counter.most, counter.qemu_polls, counter.errors)
    assert settings_findings(params, result, observed) == []
    assert [f.kind for f in settings_findings(params, result, Observed())] == [Kind.NOT_MEASURED]


def _migrate_counted(lab, guest, params: MigrationParams):
    """hv1 -> hv2 with the destination's migration connections counted; the guest follows."""
    src_host, dst_host = lab.hosts
    with ConnectionCounter(dst_host, guest.name) as counter:
        result = migrate(guest.name, src_host, dst_host, params)
    assert result.ok, result.error
    guest.host = dst_host
    return result, counter

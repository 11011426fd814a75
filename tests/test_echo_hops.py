"""Where an echo gap longer than the guest's stop went (lab/migration/echo_hops.py): the replies' own
sequence numbers and send times, fed through the real EchoProber's window, tell the guest's hop from the
network's; a gap that is the guest's stop says so; the verdict's network line carries the explanation."""
from __future__ import annotations

from array import array

import pytest

from lab.guest.probes import EchoProber, GapStats
from lab.migration.echo_hops import echo_beyond_guest

MS = 1_000_000
T0 = 1_800_000_000_000_000_000
GUEST_STOP = (1000, 1200)  # ms: the heartbeats' largest gap


def prober(answered: list[tuple[int, float]]) -> EchoProber:
    """An EchoProber (no socket, no thread) holding replies: (request sent at ms, round trip ms), one request a ms."""
    probe = EchoProber.__new__(EchoProber)
    probe.interval_ns = MS
    probe.reply_seqs, probe.reply_times, probe.reply_rtt_ns = array("Q"), array("q"), array("q")
    for sent_ms, rtt_ms in sorted(answered, key=lambda a: a[0] + a[1]):
        probe.reply_seqs.append(sent_ms + 1)
        probe.reply_times.append(T0 + int((sent_ms + rtt_ms) * MS))
        probe.reply_rtt_ns.append(int(rtt_ms * MS))
    return probe


def heartbeats(start_ms: int = GUEST_STOP[0], end_ms: int = GUEST_STOP[1]) -> GapStats:
    return GapStats(received=2000, max_gap_ms=end_ms - start_ms, lost=0, reordered=0, duplicates=0,
                    gap_start_ns=T0 + start_ms * MS)


def hops(answered: list[tuple[int, float]]) -> dict:
    probe = prober(answered)
    return echo_beyond_guest(probe, heartbeats(), probe.window(T0, T0 + 3000 * MS))


def test_requests_lost_after_the_guest_ran_again_are_the_networks_hop():
    """The guest's heartbeats came back at 1200 ms; requests sent up to 1700 ms got no answer: the way to it."""
    doc = hops([(t, 0.3) for t in range(0, 1000)] + [(t, 0.3) for t in range(1700, 3000)])
    assert doc["hop"] == "network" and doc["unanswered"] == 700, doc
    assert doc["first_answered_sent_after_guest_back_ms"] == pytest.approx(500, abs=1)
    assert "requests sent in the 500 ms after the guest's heartbeats came back got no answer" in doc["text"]


def test_requests_answered_late_waited_in_the_guest():
    """The requests of the stop reached the guest and were answered 300 ms after it ran again."""
    doc = hops([(t, 0.3) for t in range(0, 1000)] + [(t, 1500.3 - t) for t in range(1000, 1500)]
               + [(t, 0.3) for t in range(1500, 3000)])
    assert doc["hop"] == "guest" and doc["echo_back_after_guest_ms"] == pytest.approx(300, abs=1), doc
    assert "in the guest" in doc["text"] and "waited there" in doc["text"]


def test_an_echo_that_stopped_before_the_guest_did_names_the_path_moving_early():
    doc = hops([(t, 0.3) for t in range(0, 600)] + [(t, 0.3) for t in range(1200, 3000)])
    assert doc["hop"] == "network" and doc["echo_stopped_before_guest_ms"] == pytest.approx(400, abs=1), doc
    assert "before the heartbeats did" in doc["text"] and "never answered" in doc["text"]


def test_an_echo_gap_that_is_the_guests_stop_says_so():
    doc = hops([(t, 0.3) for t in range(0, 1000)] + [(t, 0.3) for t in range(1202, 3000)])
    assert doc["hop"] == "none" and "is the guest's stop" in doc["text"], doc


def test_an_echo_gap_apart_from_the_stop_is_not_blamed_on_it_but_its_hop_is_named():
    """Requests of 2000-2600 ms lost while the guest ran: not the stop, the way to the guest."""
    doc = hops([(t, 0.3) for t in range(0, 2000)] + [(t, 0.3) for t in range(2600, 3000)])
    assert doc["hop"] == "network" and doc["apart_from_stop"] and "not the guest's stop" in doc["text"], doc
    assert doc["unanswered"] == 600, doc


def test_replies_slipping_through_at_the_resume_do_not_hide_a_held_path():
    """Seen on the embedded lab: a few replies got through just after the guest ran again (1210-1214 ms), then
    the destination's path held the requests until 1900 ms; the largest echo gap is then apart from the stop."""
    doc = hops([(t, 0.3) for t in range(0, 1000)] + [(t, 0.3) for t in range(1210, 1215)]
               + [(t, 0.3) for t in range(1900, 3000)])
    assert doc["hop"] == "network" and doc["first_answered_sent_after_guest_back_ms"] == pytest.approx(700, abs=1), doc


def test_an_echo_gap_apart_from_the_stop_whose_requests_waited_is_the_guests():
    doc = hops([(t, 0.3) for t in range(0, 2000)] + [(t, 2400.3 - t) for t in range(2000, 2400)]
               + [(t, 0.3) for t in range(2400, 3000)])
    assert doc["hop"] == "guest" and "waited in the guest" in doc["text"], doc


def test_the_network_limits_line_says_where_the_echos_time_went():
    from lab.config.thresholds import JudgedLimits
    from lab.migration.live import MigrationParams, MigrationResult
    from lab.migration.measure import Measurement, verdict
    doc = hops([(t, 0.3) for t in range(0, 1000)] + [(t, 0.3) for t in range(1700, 3000)])
    result = MigrationResult("hv1", "hv2", MigrationParams(), T0, T0 + 2000 * MS, 2.0, {"time_elapsed": 2000})
    moved = Measurement("precopy-idle", result, {"hypervisor": 150.0, "guest": 200.0, "network": 700.3}, {},
                        {"beyond_guest": doc})
    limits = JudgedLimits(downtime_ms={"hypervisor": 1000.0, "guest": 1000.0, "network": 500.0}, total_s=60.0)
    findings, _ = verdict("precopy-idle", [moved], limits)
    assert len(findings) == 1 and "where the echo's time went: move 1: echo gap 701 ms = the guest's stop 200 ms" \
        in findings[0].text, findings

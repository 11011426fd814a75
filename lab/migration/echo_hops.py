"""Where an echo gap longer than the guest's own stop went: the guest, or the way to it.

The heartbeats say when the guest stopped and ran again (it sends them itself); the echo replies say when the
runner could reach it. Each reply carries the sequence number and send time of its request, so the first reply
after the echo's gap tells which hop held the rest:

- it answers a request sent before the guest's heartbeats came back: the request reached the guest and waited
  there (or on the destination) to be answered: the guest's hop (e.g. a throttled or still-waking vCPU);
- it answers a request sent well after they came back: the requests sent in between got no answer although the
  guest was running and sending: the way to the guest came back late (the network's hop: the destination's
  announce, a bridge or a route still pointing at the source).
"""
from __future__ import annotations

import bisect

from lab.guest.probes import EchoProber, GapStats

# Below this many echo periods of difference the echo's gap is the guest's stop (probe phase, jitter).
SAME_WITHIN_PERIODS = 5


def _interval(stats: GapStats) -> tuple[int, int]:
    return stats.gap_start_ns, stats.gap_start_ns + int(stats.max_gap_ms * 1e6)


def echo_beyond_guest(prober: EchoProber, heartbeats: GapStats, echo: GapStats) -> dict:
    """The echo's largest gap set against the heartbeats': how much longer, and which hop held the difference
    (`hop`: none | guest | network), with one sentence saying so (`text`)."""
    h0, h1 = _interval(heartbeats)
    e0, e1 = _interval(echo)
    period_ms = prober.interval_ns / 1e6
    doc = {"echo_gap_ms": round(echo.max_gap_ms, 1), "guest_gap_ms": round(heartbeats.max_gap_ms, 1),
           "excess_ms": round(echo.max_gap_ms - heartbeats.max_gap_ms, 1),
           "echo_stopped_before_guest_ms": round((h0 - e0) / 1e6, 1),
           "echo_back_after_guest_ms": round((e1 - h1) / 1e6, 1)}
    if e1 < h0 or h1 < e0:
        return {**doc, **_apart_from_stop(prober, heartbeats, echo, e0, e1, h0, h1)}
    if doc["excess_ms"] <= SAME_WITHIN_PERIODS * period_ms:
        return {**doc, "hop": "none", "text": f"the echo's gap ({echo.max_gap_ms:.0f} ms) is the guest's stop "
                                               f"({heartbeats.max_gap_ms:.0f} ms)"}
    first = bisect.bisect_left(prober.reply_times, e1)
    if first >= len(prober.reply_times):
        return {**doc, "hop": "network", "text": f"no echo reply after the guest's heartbeats came back: the guest "
                                                  f"ran but the runner could not reach it for {doc['excess_ms']:.0f} ms "
                                                  "and more"}
    rtt_ms = prober.reply_rtt_ns[first] / 1e6
    sent_ns = prober.reply_times[first] - prober.reply_rtt_ns[first]
    before = prober.reply_seqs[first - 1] if first > 0 else prober.reply_seqs[first]
    unanswered = max(0, prober.reply_seqs[first] - before - 1)
    late_ms = (sent_ns - h1) / 1e6  # the first answered request, sent this long after the guest ran again
    doc.update(first_answered_sent_after_guest_back_ms=round(late_ms, 1), first_answer_rtt_ms=round(rtt_ms, 1),
               unanswered=unanswered)
    threshold_ms = SAME_WITHIN_PERIODS * period_ms
    head = f"echo gap {echo.max_gap_ms:.0f} ms = the guest's stop {heartbeats.max_gap_ms:.0f} ms + {doc['excess_ms']:.0f} ms"
    if doc["echo_back_after_guest_ms"] > threshold_ms:  # the echo came back late
        if late_ms > threshold_ms:
            return {**doc, "hop": "network",
                    "text": f"{head} on the way to it: requests sent in the {late_ms:.0f} ms after the guest's "
                            f"heartbeats came back got no answer ({unanswered} unanswered in all) while the guest ran; "
                            f"the first answered one took {rtt_ms:.1f} ms (the network's hop: announce, bridge or "
                            "route still pointing at the source)"}
        return {**doc, "hop": "guest",
                "text": f"{head} in the guest: the first reply answered a request sent {-late_ms:.0f} ms before the "
                        f"heartbeats came back and took {rtt_ms:.0f} ms: it reached the guest and waited there"}
    # The echo stopped early: the guest still sent heartbeats but answered nothing.
    if sent_ns < h0:
        return {**doc, "hop": "guest",
                "text": f"{head}: echo replies stopped {doc['echo_stopped_before_guest_ms']:.0f} ms before the "
                        f"heartbeats did, and the requests of that time were answered only after the stop (the first "
                        f"took {rtt_ms:.0f} ms): they waited in the guest"}
    return {**doc, "hop": "network",
            "text": f"{head}: echo replies stopped {doc['echo_stopped_before_guest_ms']:.0f} ms before the heartbeats "
                    f"did and those requests were never answered ({unanswered} in all): lost on the way to the guest "
                    "while it ran (the network's hop: the path moved before the guest did)"}


def _apart_from_stop(prober: EchoProber, heartbeats: GapStats, echo: GapStats, e0: int, e1: int, h0: int,
                     h1: int) -> dict:
    """The echo's largest gap lies apart from the guest's stop: the guest ran (and sent heartbeats) all through
    it. A few replies can slip through around the resume before the path to the destination settles, so this is
    the shape of a late path too. The first reply after the gap says whose: it answers a request of the gap's
    start (it waited in the guest) or one sent late in it (the earlier ones were lost on the way)."""
    head = (f"the echo's largest gap ({echo.max_gap_ms:.0f} ms) is not the guest's stop ({heartbeats.max_gap_ms:.0f} ms): "
            f"it began {abs(e0 - h0) / 1e6:.0f} ms {'before' if e0 < h0 else 'after'} the stop began, while the guest ran")
    first = bisect.bisect_left(prober.reply_times, e1)
    if first >= len(prober.reply_times):
        return {"hop": "network", "apart_from_stop": True,
                "text": f"{head}; no echo reply after it: the runner could not reach the guest on the way to it"}
    rtt_ms = prober.reply_rtt_ns[first] / 1e6
    sent_ns = prober.reply_times[first] - prober.reply_rtt_ns[first]
    before = prober.reply_seqs[first - 1] if first > 0 else prober.reply_seqs[first]
    unanswered = max(0, prober.reply_seqs[first] - before - 1)
    into_gap_ms = (sent_ns - e0) / 1e6
    doc = {"apart_from_stop": True, "first_answered_sent_after_guest_back_ms": round((sent_ns - h1) / 1e6, 1),
           "first_answer_rtt_ms": round(rtt_ms, 1), "unanswered": unanswered}
    if into_gap_ms <= SAME_WITHIN_PERIODS * prober.interval_ns / 1e6:
        return {**doc, "hop": "guest",
                "text": f"{head}; the first reply after it answered a request sent at its start and took "
                        f"{rtt_ms:.0f} ms: it waited in the guest"}
    return {**doc, "hop": "network",
            "text": f"{head}; requests sent in its first {into_gap_ms:.0f} ms got no answer ({unanswered} unanswered) "
                    "on the way to it (the network's hop: announce, bridge or route still pointing at the source)"}

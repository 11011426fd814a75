"""Downtime probes seen from the runner: guest heartbeats and UDP echo replies.

Both record the kernel's receive timestamp of every datagram (SO_TIMESTAMPNS),
so Python's scheduling jitter does not enter the gaps they report.
"""
from __future__ import annotations

import bisect
import socket
import struct
import threading
import time
from array import array
from dataclasses import dataclass

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
HEARTBEAT = struct.Struct("<4sIQQ16sQ")  # magic, flags, seq, guest monotonic ns, boot id, uptime ms
WORK = struct.Struct("<QQ")  # after it: the guest's steady work so far (units done, ns spent in them; agent work.c)
ECHO = struct.Struct("<cQQ")  # 'E', seq, sent (realtime ns)
CMSG_SPACE = socket.CMSG_SPACE(16)


def _timestamped_socket(bind_address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((bind_address, 0))
    sock.settimeout(0.2)
    return sock


def _recv_stamped(sock: socket.socket, size: int = 128) -> tuple[bytes, int] | None:
    """One datagram and its kernel receive time (CLOCK_REALTIME ns), or None on timeout."""
    try:
        data, ancdata, _flags, _addr = sock.recvmsg(size, CMSG_SPACE)
    except (socket.timeout, BlockingIOError):
        return None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack("qq", payload[:16])
            return data, sec * 1_000_000_000 + nsec
    return data, time.time_ns()


@dataclass(frozen=True)
class GapStats:
    """What a probe saw inside one time window."""
    received: int
    max_gap_ms: float
    lost: int  # heartbeats: sequence numbers never seen; echo: probes never answered
    reordered: int
    duplicates: int
    gap_start_ns: int = 0  # when the largest gap began (realtime)
    # Every gap above STALL_PERIODS periods, not only the largest: (start ns, length ms).
    stalls: tuple[tuple[int, float], ...] = ()
    boot_ids: int = 1  # distinct boot ids seen in the window (heartbeats; more than one: two guests)

    @property
    def stalled_ms(self) -> float:
        return round(sum(ms for _start, ms in self.stalls), 3)


STALL_PERIODS = 3  # a gap longer than this many probe periods is a stall worth keeping


def _max_gap(times: list[int]) -> tuple[float, int]:
    best, start = 0, 0
    for a, b in zip(times, times[1:]):
        if b - a > best:
            best, start = b - a, a
    return best / 1e6, start


def _stalls(times: list[int], period_ns: int) -> tuple[tuple[int, float], ...]:
    limit = STALL_PERIODS * period_ns
    return tuple((a, round((b - a) / 1e6, 3)) for a, b in zip(times, times[1:]) if b - a > limit)


def _indices_between(times: array, start_ns: int, end_ns: int) -> range:
    """Receive times come in order (one socket, kernel stamps), so the window is a slice."""
    return range(bisect.bisect_left(times, start_ns), bisect.bisect_right(times, end_ns))


class HeartbeatReceiver:
    """Receives one guest's heartbeats on an ephemeral UDP port of the runner."""

    def __init__(self, bind_address: str):
        self.sock = _timestamped_socket(bind_address)
        self.port = self.sock.getsockname()[1]
        self.seqs = array("Q")
        self.times = array("q")
        self.boot_ids: list[bytes] = []  # each boot id in the order first seen
        self.boot_of = array("I")  # per heartbeat: index into boot_ids
        self.work_units = array("Q")  # per heartbeat: the guest's work totals (0 from an agent without them)
        self.work_ns = array("Q")
        self.first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeats:{self.port}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            got = _recv_stamped(self.sock)
            if got is None:
                continue
            data, stamp = got
            if len(data) < HEARTBEAT.size or data[:4] != b"LHB1":
                continue
            _magic, _flags, seq, _mono, boot_id, _uptime = HEARTBEAT.unpack_from(data)
            if not self.boot_ids or self.boot_ids[-1] != boot_id:
                self.boot_ids.append(boot_id)
            self.boot_of.append(len(self.boot_ids) - 1)  # before the time: a window never sees a time without it
            units, spent = WORK.unpack_from(data, HEARTBEAT.size) if len(data) >= HEARTBEAT.size + WORK.size else (0, 0)
            self.work_units.append(units)
            self.work_ns.append(spent)
            self.seqs.append(seq)
            self.times.append(stamp)
            self.first.set()

    def count(self) -> int:
        return len(self.seqs)

    def count_since(self, start_ns: int) -> int:
        return len(self.times) - bisect.bisect_left(self.times, start_ns)

    def last_time(self) -> int:
        return self.times[-1] if self.times else 0

    def window(self, start_ns: int, end_ns: int, period_ns: int = 1_000_000) -> GapStats:
        """Gaps between consecutive heartbeats arriving in [start, end], and sequence accounting."""
        idx = _indices_between(self.times, start_ns, end_ns)
        if not idx:
            return GapStats(0, (end_ns - start_ns) / 1e6, 0, 0, 0, start_ns, ((start_ns, (end_ns - start_ns) / 1e6),), 0)
        times = [self.times[i] for i in idx]
        seqs = [self.seqs[i] for i in idx]
        # The window's edges count as heartbeats: silence at either end is a gap too.
        edged = [start_ns, *times, end_ns]
        gap, gap_start = _max_gap(edged)
        reordered = sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
        unique = set(seqs)
        duplicates = len(seqs) - len(unique)
        lost = (max(unique) - min(unique) + 1) - len(unique)
        boots = len({self.boot_of[i] for i in idx})
        return GapStats(len(seqs), gap, lost, reordered, duplicates, gap_start, _stalls(edged, period_ns), boots)

    def arrivals(self, start_ns: int, end_ns: int) -> list[int]:
        """Arrival times (ns) in [start, end]: the series a report's timeline draws."""
        return [self.times[i] for i in _indices_between(self.times, start_ns, end_ns)]

    def pace(self, start_ns: int, end_ns: int, window_ns: int) -> list[tuple[int, int, float]]:
        """The guest's steady work per window of [start, end]: (window start ns, units done, mean µs a unit took),
        from the totals the heartbeats carry (one boot only: a window across a reboot is left out)."""
        out = []
        for t in range(start_ns, end_ns - window_ns + 1, window_ns):
            idx = _indices_between(self.times, t, t + window_ns)
            if len(idx) < 2 or self.boot_of[idx[0]] != self.boot_of[idx[-1]]:
                out.append((t, 0, 0.0))  # no heartbeat: the guest did nothing the runner could see
                continue
            units = self.work_units[idx[-1]] - self.work_units[idx[0]]
            spent = self.work_ns[idx[-1]] - self.work_ns[idx[0]]
            out.append((t, units, spent / units / 1000 if units else 0.0))
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class EchoProber:
    """Sends UDP echo probes to the guest at a fixed interval and records the replies."""

    def __init__(self, bind_address: str, guest_ip: str, port: int = 7777, interval_us: int = 1000):
        self.sock = _timestamped_socket(bind_address)
        self.sock.connect((guest_ip, port))
        self.interval_ns = interval_us * 1000
        self.sent = 0
        self.reply_seqs = array("Q")
        self.reply_times = array("q")
        self.reply_rtt_ns = array("q")  # per reply: its round trip (the guest's echo service's response time)
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name=f"echo-send:{guest_ip}", daemon=True)
        self._receiver = threading.Thread(target=self._recv_loop, name=f"echo-recv:{guest_ip}", daemon=True)
        self._receiver.start()
        self._sender.start()

    def _send_loop(self) -> None:
        next_at = time.monotonic_ns()
        seq = 0
        while not self._stop.is_set():
            seq += 1
            try:
                self.sock.send(ECHO.pack(b"E", seq, time.time_ns()))
                self.sent = seq
            except OSError:
                pass  # unreachable for a moment (e.g. during switchover): the missing reply is the signal
            next_at += self.interval_ns
            delay = next_at - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            else:
                next_at = time.monotonic_ns()  # late: re-anchor rather than burst

    def _recv_loop(self) -> None:
        while not self._stop.is_set():
            try:
                got = _recv_stamped(self.sock)
            except OSError:  # ICMP unreachable surfaces as ECONNREFUSED on a connected socket
                time.sleep(0.001)
                continue
            if got is None:
                continue
            data, stamp = got
            if len(data) >= ECHO.size and data[:1] == b"E":
                _e, seq, sent = ECHO.unpack_from(data)
                self.reply_seqs.append(seq)
                self.reply_rtt_ns.append(stamp - sent)
                self.reply_times.append(stamp)

    def window(self, start_ns: int, end_ns: int) -> GapStats:
        idx = _indices_between(self.reply_times, start_ns, end_ns)
        times = [self.reply_times[i] for i in idx]
        seqs = [self.reply_seqs[i] for i in idx]
        edged = [start_ns, *times, end_ns]
        gap, gap_start = _max_gap(edged)
        stalls = _stalls(edged, self.interval_ns)
        if not seqs:
            return GapStats(0, gap, 0, 0, 0, gap_start, stalls)
        unique = set(seqs)
        lost = (max(unique) - min(unique) + 1) - len(unique)
        reordered = sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
        return GapStats(len(seqs), gap, lost, reordered, len(seqs) - len(unique), gap_start, stalls)

    def arrivals(self, start_ns: int, end_ns: int) -> list[int]:
        return [self.reply_times[i] for i in _indices_between(self.reply_times, start_ns, end_ns)]

    def round_trips_us(self, start_ns: int, end_ns: int) -> list[float]:
        """Round trips (µs) of the replies received in [start, end]."""
        return [self.reply_rtt_ns[i] / 1000 for i in _indices_between(self.reply_times, start_ns, end_ns)]

    def replies(self) -> int:
        return len(self.reply_seqs)

    def replies_since(self, start_ns: int) -> int:
        return len(self.reply_times) - bisect.bisect_left(self.reply_times, start_ns)

    def close(self) -> None:
        self._stop.set()
        self._sender.join(timeout=2)
        self._receiver.join(timeout=2)
        self.sock.close()

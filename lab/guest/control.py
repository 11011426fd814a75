"""The runner's side of the guest agent's text command channel (UDP)."""
from __future__ import annotations

import itertools
import socket
import time

from lab.errors import AgentTimeout, GuestError

_reqids = itertools.count(1)


class AgentControl:
    def __init__(self, bind_address: str, guest_ip: str, port: int = 7777):
        self.guest = (guest_ip, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind_address, 0))

    def command(self, cmd: str, *args: object, timeout: float = 10.0, resend: float = 0.5) -> dict[str, str]:
        """Send `C <reqid> cmd args`; resend until `R <reqid> ...` comes back; return its key=value pairs."""
        reqid = f"{next(_reqids)}-{time.monotonic_ns() % 1_000_000}"
        text = " ".join(["C", reqid, cmd, *map(str, args)]).encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.sock.sendto(text, self.guest)
            except OSError:
                pass  # not reachable yet; retry until the deadline
            until = min(deadline, time.monotonic() + resend)
            while time.monotonic() < until:
                self.sock.settimeout(max(0.01, until - time.monotonic()))
                try:
                    data, _ = self.sock.recvfrom(4096)
                except (socket.timeout, ConnectionRefusedError):
                    continue
                parts = data.decode(errors="replace").split()
                if len(parts) >= 3 and parts[0] == "R" and parts[1] == reqid:
                    return self._parse(cmd, parts[2:])
        raise AgentTimeout(f"guest agent at {self.guest[0]} did not answer `{cmd}` within {timeout:.0f} s")

    @staticmethod
    def _parse(cmd: str, words: list[str]) -> dict[str, str]:
        status, rest = words[0], words[1:]
        fields = dict(w.split("=", 1) for w in rest if "=" in w)
        if status != "ok":
            raise GuestError(f"guest agent refused `{cmd}`: {' '.join(rest)}")
        return fields

    def close(self) -> None:
        self.sock.close()

"""Guest addresses and MACs from the lab's guest range, shared by all xdist workers."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from filelock import FileLock

from lab.errors import GuestError


class AddressPool:
    def __init__(self, lab_dir: Path, guest_range: str):
        self.path = lab_dir / "guest-addresses.json"
        self.lock = FileLock(str(lab_dir / ".guest-addresses.lock"))
        self.network = ipaddress.IPv4Network(guest_range)

    def allocate(self, owner: str) -> str:
        with self.lock:
            taken = self._read()
            for address in self.network.hosts():
                if str(address) not in taken:
                    taken[str(address)] = owner
                    self._write(taken)
                    return str(address)
        raise GuestError(f"no free guest address left in {self.network}; remove stale guests with `python -m lab down`")

    def release(self, address: str) -> None:
        with self.lock:
            taken = self._read()
            taken.pop(address, None)
            self._write(taken)

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, taken: dict[str, str]) -> None:
        self.path.write_text(json.dumps(taken))


def mac_for(address: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) from the guest's address."""
    b = ipaddress.IPv4Address(address).packed
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(b[1], b[2], b[3])

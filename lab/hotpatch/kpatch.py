"""The header of a kpatch file (libcareplus's `struct kpatch_file`), read directly:
its patch id and the buildID of the binary it is for. A kpatch loads only into an
object with that buildID, so this is what names and checks every kpatch the lab makes.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from lab.errors import HotpatchError

KPATCH_MAGIC = b"KPATCH1"
# magic, patch id, flags, safety, pad, module name, buildid, pad, build time, checksum
KPATCH_HEADER = struct.Struct("<8s8sBB6s64s41s7sQI")


@dataclass(frozen=True)
class KpatchHeader:
    path: str
    patch_id: str
    buildid: str
    build_time: int = 0


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def read_kpatch_header(path: str | os.PathLike) -> KpatchHeader:
    """The header of a .kpatch file, read directly (libcare-dump shows the same; see ctl_output)."""
    with open(path, "rb") as fh:
        head = fh.read(KPATCH_HEADER.size)
    if len(head) < KPATCH_HEADER.size or not head.startswith(KPATCH_MAGIC):
        raise HotpatchError(f"{path}: not a kpatch file (no {KPATCH_MAGIC.decode()} magic)")
    _magic, patch_id, _flags, _safety, _pad, _module, buildid, _pad1, built, _csum = KPATCH_HEADER.unpack(head)
    return KpatchHeader(str(path), _cstring(patch_id), _cstring(buildid), built)

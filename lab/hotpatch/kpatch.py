"""The header of a kpatch file (libcareplus's `struct kpatch_file`), read directly:
its patch id and the buildID of the binary it is for. A kpatch loads only into an
object with that buildID, so this is what names and checks every kpatch the lab makes.
After the header comes an ELF object; its `.kpatch.strtab` names the functions the
kpatch replaces (libcare-dump -c writes the same ELF out).
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from lab.errors import HotpatchError

KPATCH_MAGIC = b"KPATCH1"
# magic, patch id, flags, safety, pad, module name, buildid, pad, build time, checksum
KPATCH_HEADER = struct.Struct("<8s8sBB6s64s41s7sQI")
KPATCH_OFFSETS = struct.Struct("<II")  # nr_reloc, kpatch_offset (where the ELF object starts), after the header
KPATCH_SUFFIX = ".kpatch"


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


def replaced_functions(path: str | os.PathLike) -> list[str]:
    """The functions a kpatch replaces: the names in its ELF object's .kpatch.strtab, in its order."""
    data = open(path, "rb").read()
    if not data.startswith(KPATCH_MAGIC) or len(data) < KPATCH_HEADER.size + KPATCH_OFFSETS.size:
        raise HotpatchError(f"{path}: not a kpatch file (no {KPATCH_MAGIC.decode()} magic)")
    _relocs, offset = KPATCH_OFFSETS.unpack_from(data, KPATCH_HEADER.size)
    try:
        section = ELFFile(io.BytesIO(data[offset:])).get_section_by_name(".kpatch.strtab")
    except ELFError as exc:
        raise HotpatchError(f"{path}: no ELF object at offset {offset} ({exc})") from None
    if section is None:
        raise HotpatchError(f"{path}: its ELF object has no .kpatch.strtab")
    names = [n.decode(errors="replace") for n in section.data().split(b"\0") if n]
    return [n[:-len(KPATCH_SUFFIX)] if n.endswith(KPATCH_SUFFIX) else n for n in names]

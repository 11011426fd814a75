"""What the harness reads from ELF files, through pyelftools: a binary's GNU build ID
(the .note.gnu.build-id note), a digest of its .text (equal for two builds of the same
code whatever their notes), and its function symbols (the name at an address, the
size of a function). Each function raises `error` (a LabError subclass the caller
names, as `lab.util.process.run` does) in one line when the file is missing, not ELF,
or lacks what was asked for.
"""
from __future__ import annotations

import bisect
import hashlib
import os
from typing import BinaryIO, Callable, TypeVar

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from lab.errors import LabError

T = TypeVar("T")


def _read(path: str | os.PathLike, error: type[LabError], what: Callable[[ELFFile], T]) -> T:
    """Open path as ELF and apply `what`; a file that is not ELF becomes one `error` line."""
    try:
        with open(path, "rb") as fh:
            return what(_elf(fh, path, error))
    except ELFError as exc:
        raise error(f"{path}: unreadable ELF file ({exc})") from None


def _elf(fh: BinaryIO, path: str | os.PathLike, error: type[LabError]) -> ELFFile:
    try:
        return ELFFile(fh)
    except ELFError:
        raise error(f"{path}: not an ELF file") from None


def build_id(path: str | os.PathLike, *, error: type[LabError] = LabError) -> str:
    """The NT_GNU_BUILD_ID note of an ELF file, as lowercase hex."""
    def find(elf: ELFFile) -> str | None:
        # Sections first; program headers too, for a file whose section table was stripped.
        holders = [s for s in elf.iter_sections() if isinstance(s, NoteSection)]
        holders += [s for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"]
        for holder in holders:
            for note in holder.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    return str(note["n_desc"]).lower()
        return None

    found = _read(path, error, find)
    if not found:
        raise error(f"{path}: no GNU build ID note (link with -Wl,--build-id)")
    return found


def text_digest(path: str | os.PathLike, *, error: type[LabError] = LabError) -> str:
    """sha256 of the .text section: equal for two binaries with the same code, whatever their notes or symbols."""
    def digest(elf: ELFFile) -> str | None:
        text = elf.get_section_by_name(".text")
        return hashlib.sha256(text.data()).hexdigest() if text is not None and text["sh_size"] else None

    found = _read(path, error, digest)
    if not found:
        raise error(f"{path}: no .text section")
    return found


def function_symbols(path: str | os.PathLike, *, error: type[LabError] = LabError) -> list[tuple[int, int, str]]:
    """(address, size, name) of the sized symbols defined in code, sorted: the rows `nm -S --defined-only`
    prints with a size and type t, T or W.

    Only .symtab counts (like nm without -D): a stripped binary has none, and the list is empty.
    """
    def rows(elf: ELFFile) -> list[tuple[int, int, str]]:
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            return []
        code = {i for i, s in enumerate(elf.iter_sections()) if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR}
        out = []
        for sym in symtab.iter_symbols():
            shndx, kind, bind = sym["st_shndx"], sym["st_info"]["type"], sym["st_info"]["bind"]
            if not isinstance(shndx, int) or not sym.name or not sym["st_size"] \
                    or kind in ("STT_SECTION", "STT_FILE", "STT_GNU_IFUNC"):
                continue  # undefined, absolute or common, a label without a size, or not one nm shows as t/T/W
            if shndx in code or (bind == "STB_WEAK" and kind != "STT_OBJECT"):
                out.append((sym["st_value"], sym["st_size"], sym.name))
        return sorted(out)

    return _read(path, error, rows)


class Symbols:
    """Function symbols of an ELF file, read once when first asked, for turning addresses into names and sizes."""

    def __init__(self, path: str | os.PathLike, *, error: type[LabError] = LabError):
        self.path = str(path)
        self.error = error
        self._table: list[tuple[int, int, str]] | None = None
        self._starts: list[int] = []

    def table(self) -> list[tuple[int, int, str]]:
        if self._table is None:
            self._table = function_symbols(self.path, error=self.error)
            self._starts = [start for start, _size, _name in self._table]
        return self._table

    def name_at(self, addr: int) -> str:
        """`name` at a symbol's start, `name+0xOFF` inside it, "" outside every function."""
        table = self.table()
        # The first symbol (in table order) whose [start, start + size) holds addr.
        for start, size, name in table[:bisect.bisect_right(self._starts, addr)]:
            if start <= addr < start + size:
                return name if addr == start else f"{name}+0x{addr - start:x}"
        return ""

    def size_of(self, name: str) -> int | None:
        for _start, size, sym in self.table():
            if sym == name:
                return size
        return None

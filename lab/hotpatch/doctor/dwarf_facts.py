"""What the target binary's DWARF says about the source a patch changes (pyelftools): the
compilation units built from a file, and in them every function (where it is declared,
its entry address, noreturn, inline, its parameters, the callers it is inlined into),
every variable with static storage and every struct, so that changed lines map onto
the entities they belong to. Only the units of the changed files are walked: QEMU's
debug info is too large to read whole on every run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from lab.errors import HotpatchError
from lab.hotpatch.qemu_build import load_build
from lab.util.elf import build_id

DEBUG_ROOT = Path("/usr/lib/debug/.build-id")
NO_DEBUG_INFO = ("has no debug info (no .debug_info, and no {debug} from a debug symbols package): give a build "
                 "with -g (the lab's QEMU source build has it, --qemu BUILD_DIR) or install the binary's debug "
                 "symbols (Debian: its -dbgsym package; openEuler: dnf debuginfo-install qemu)")
INLINED = (1, 3)  # DW_INL_inlined, DW_INL_declared_inlined


@dataclass
class FunctionFacts:
    name: str
    file: str
    decl_line: int
    external: bool
    noreturn: bool = False
    inline_attr: int = 0  # DW_AT_inline of the abstract instance, 0 if none
    entry: int | None = None  # out-of-line copy's address, if the DWARF has one
    params: list[str] = field(default_factory=list)
    inlined_into: list[tuple[str, int]] = field(default_factory=list)  # (caller, address of the inlined copy)
    die_offset: int = 0


@dataclass
class VariableFacts:
    name: str
    file: str
    decl_line: int
    function: str | None  # enclosing function of a static local, None at file scope
    static_storage: bool  # has a fixed address (DW_OP_addr), or is a file-scope definition


@dataclass
class StructFacts:
    name: str
    file: str
    decl_line: int
    last_line: int  # the last member's line
    byte_size: int | None
    members: list[str]


@dataclass
class UnitFacts:
    """Everything one compilation unit declares, by kind."""
    name: str
    functions: list[FunctionFacts] = field(default_factory=list)
    variables: list[VariableFacts] = field(default_factory=list)
    structs: list[StructFacts] = field(default_factory=list)

    def function(self, name: str) -> FunctionFacts | None:
        found = [f for f in self.functions if f.name == name]
        return next((f for f in found if f.entry is not None), found[0] if found else None)


def _attr(die, name, default=None):
    attr = die.attributes.get(name)
    return attr.value if attr is not None else default


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def same_source(dwarf_path: str, source_path: str) -> bool:
    """A DWARF file name (maybe ../dir/x.c or /abs/dir/x.c) is the patch's dir/x.c."""
    dwarf = os.path.normpath(dwarf_path).lstrip("./")
    return dwarf == source_path or dwarf.endswith("/" + source_path)


def _build_tree_of(binary: str) -> Path | None:
    """The source tree of the lab's QEMU build that `binary` belongs to (<entry>/root/usr/bin/BINARY), if any."""
    for entry in Path(binary).resolve().parents[:4]:
        if (entry / "build.json").is_file():
            build = load_build(entry)
            return build.srcdir if build is not None else None
    return None


class DebugInfo:
    """The DWARF of a binary, or of its separate debug file found by buildID."""

    def __init__(self, binary: str | os.PathLike, error: type[HotpatchError] = HotpatchError):
        self.binary = str(binary)
        self.error = error
        self.buildid = build_id(self.binary, error=error)
        self.path = self._with_debug_info()
        self._fh = open(self.path, "rb")
        self.elf = ELFFile(self._fh)
        self.dwarf = self.elf.get_dwarf_info()
        self._units: dict[int, UnitFacts] = {}

    def _with_debug_info(self) -> str:
        if self._has_debug_info(self.binary):
            return self.binary
        separate = DEBUG_ROOT / self.buildid[:2] / f"{self.buildid[2:]}.debug"
        if separate.exists() and self._has_debug_info(separate):
            return str(separate)
        raise self.error(f"{self.binary} " + NO_DEBUG_INFO.format(debug=separate))

    def _has_debug_info(self, path: str | os.PathLike) -> bool:
        try:
            with open(path, "rb") as fh:
                return ELFFile(fh).get_section_by_name(".debug_info") is not None
        except (OSError, ELFError) as exc:
            raise self.error(f"{path}: not a readable ELF file ({exc})") from None

    def close(self) -> None:
        self._fh.close()

    @cached_property
    def _unit_names(self) -> list[tuple[object, str, str]]:
        """(CU, its source file, its compilation directory) of every unit."""
        out = []
        for cu in self.dwarf.iter_CUs():
            top = cu.get_top_DIE()
            out.append((cu, _text(_attr(top, "DW_AT_name", "")), _text(_attr(top, "DW_AT_comp_dir", ""))))
        return out

    @property
    def unit_count(self) -> int:
        return len(self._unit_names)

    def units_for(self, source_path: str) -> list:
        """The compilation units built from `source_path` (a .c file of the patch)."""
        return [cu for cu, name, _dir in self._unit_names if same_source(name, source_path)]

    def source_root(self, source_path: str) -> Path | None:
        """The source tree the unit of `source_path` was compiled from, when it is still on disk."""
        for _cu, name, comp_dir in self._unit_names:
            if same_source(name, source_path):
                full = Path(os.path.normpath(os.path.join(comp_dir, name)))
                root = Path(str(full)[: -len(source_path)]) if str(full).endswith(source_path) else None
                if root and (root / source_path).exists():
                    return root
        # Through the compiler cache an object keeps the compilation directory of the build that compiled it
        # first, which may be another tree of the same source (gone by now): the lab's own build knows its tree.
        tree = _build_tree_of(self.binary)
        if tree is not None and self.units_for(source_path) and (tree / source_path).exists():
            return tree
        return None

    def includers(self, header_path: str) -> list[str]:
        """Source files of the units whose line table lists `header_path` (a changed header's includers)."""
        out = []
        for cu, name, _dir in self._unit_names:
            program = self.dwarf.line_program_for_CU(cu)
            if program and any(same_source(self._file_name(program, i), header_path)
                               for i in range(len(program.header.file_entry))):
                out.append(os.path.normpath(name).lstrip("./"))
        return out

    @staticmethod
    def _file_name(program, index: int) -> str:
        """Path of file entry `index` of a line program, as listed (index is 0-based here)."""
        entry = program.header.file_entry[index]
        dirs = program.header.include_directory
        dir_index = entry.dir_index
        if program.header.version < 5:  # DWARF 4: directory 0 is the compilation directory
            dir_index -= 1
        directory = _text(dirs[dir_index]) if 0 <= dir_index < len(dirs) else ""
        return os.path.join(directory, _text(entry.name))

    def unit(self, cu) -> UnitFacts:
        """Every function, static-storage variable and struct one unit declares (read once)."""
        if cu.cu_offset not in self._units:
            self._units[cu.cu_offset] = self._read_unit(cu)
        return self._units[cu.cu_offset]

    def _read_unit(self, cu) -> UnitFacts:
        program = self.dwarf.line_program_for_CU(cu)
        version = program.header.version if program else 5
        files: dict[int, str] = {}

        def file_of(die) -> str:
            index = _attr(die, "DW_AT_decl_file")
            if index is None or program is None:
                return ""
            if index not in files:
                real = index if version >= 5 else index - 1
                files[index] = (self._file_name(program, real) if 0 <= real < len(program.header.file_entry)
                                else "")
            return files[index]

        top = cu.get_top_DIE()
        facts = UnitFacts(_text(_attr(top, "DW_AT_name", "")))
        by_offset: dict[int, FunctionFacts] = {}
        inlined: list[tuple[int, str, int]] = []  # (origin offset, caller, address)
        for die in cu.iter_DIEs():
            tag = die.tag
            if tag == "DW_TAG_subprogram":
                self._subprogram(die, file_of, facts, by_offset)
            elif tag == "DW_TAG_inlined_subroutine" and "DW_AT_abstract_origin" in die.attributes:
                origin = die.get_DIE_from_attribute("DW_AT_abstract_origin")
                inlined.append((origin.offset, _enclosing_function(die), _attr(die, "DW_AT_low_pc", 0) or
                                _attr(die, "DW_AT_entry_pc", 0) or 0))
            elif tag == "DW_TAG_variable" and "DW_AT_decl_line" in die.attributes:
                variable = _variable(die, file_of(die))
                if variable:
                    facts.variables.append(variable)
            elif tag in ("DW_TAG_structure_type", "DW_TAG_union_type") and "DW_AT_name" in die.attributes \
                    and not _attr(die, "DW_AT_declaration"):
                members = [c for c in die.iter_children() if c.tag == "DW_TAG_member"]
                lines = [_attr(m, "DW_AT_decl_line", 0) for m in members]
                facts.structs.append(StructFacts(_text(die.attributes["DW_AT_name"].value), file_of(die),
                                                 _attr(die, "DW_AT_decl_line", 0), max(lines, default=0),
                                                 _attr(die, "DW_AT_byte_size"),
                                                 [_text(_attr(m, "DW_AT_name", "?")) for m in members]))
        for origin, caller, address in inlined:
            if origin in by_offset:
                by_offset[origin].inlined_into.append((caller, address))
        return facts

    def _subprogram(self, die, file_of, facts: UnitFacts, by_offset: dict[int, FunctionFacts]) -> None:
        entry = _attr(die, "DW_AT_low_pc") if "DW_AT_high_pc" in die.attributes else None
        if entry is None and "DW_AT_ranges" in die.attributes:
            entry = -1  # has code in several ranges; the symbol table gives the entry
        if "DW_AT_abstract_origin" in die.attributes:  # the out-of-line copy of an inline function
            origin = die.get_DIE_from_attribute("DW_AT_abstract_origin")
            if origin.offset in by_offset and entry is not None:
                by_offset[origin.offset].entry = entry
            return
        if "DW_AT_name" not in die.attributes or _attr(die, "DW_AT_declaration"):
            return
        if "DW_AT_specification" in die.attributes:
            return
        function = FunctionFacts(
            name=_text(die.attributes["DW_AT_name"].value), file=file_of(die),
            decl_line=_attr(die, "DW_AT_decl_line", 0), external=bool(_attr(die, "DW_AT_external")),
            noreturn=bool(_attr(die, "DW_AT_noreturn")), inline_attr=_attr(die, "DW_AT_inline", 0) or 0,
            entry=entry, die_offset=die.offset,
            params=[_text(_attr(c, "DW_AT_name", "?")) for c in die.iter_children()
                    if c.tag == "DW_TAG_formal_parameter"])
        facts.functions.append(function)
        by_offset[die.offset] = function


def _enclosing_function(die) -> str:
    parent = die.get_parent()
    while parent is not None and parent.tag != "DW_TAG_subprogram":
        parent = parent.get_parent()
    if parent is None:
        return "?"
    if "DW_AT_abstract_origin" in parent.attributes:
        parent = parent.get_DIE_from_attribute("DW_AT_abstract_origin")
    if "DW_AT_specification" in parent.attributes:
        parent = parent.get_DIE_from_attribute("DW_AT_specification")
    return _text(_attr(parent, "DW_AT_name", "?"))


def _variable(die, file: str) -> VariableFacts | None:
    if "DW_AT_name" not in die.attributes or _attr(die, "DW_AT_declaration"):
        return None
    parent = die.get_parent()
    at_file_scope = parent is not None and parent.tag == "DW_TAG_compile_unit"
    location = die.attributes.get("DW_AT_location")
    # A fixed address is DW_OP_addr (0x03) as the whole expression: static storage.
    fixed = location is not None and isinstance(location.value, list) and location.value[:1] == [0x03]
    if not at_file_scope and not fixed:
        return None  # an automatic local: code, not data
    return VariableFacts(_text(die.attributes["DW_AT_name"].value), file, _attr(die, "DW_AT_decl_line", 0),
                         None if at_file_scope else _enclosing_function(die), True)

"""Where a changed line belongs: the function, file-scope variable or struct of the original
source that holds it. Entities and their first lines come from the DWARF; their last lines
from the original source when it is on disk (the build's own tree: braces and semicolons
counted), else each runs up to the next entity.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.hotpatch.doctor.dwarf_facts import FunctionFacts, StructFacts, UnitFacts, VariableFacts, same_source

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_LINE_COMMENT = re.compile(r"//.*$")


@dataclass
class Entity:
    kind: str  # function | variable | struct
    name: str
    first: int  # its DW_AT_decl_line
    last: int
    body: int  # function: the line of its opening brace (the signature ends before it); else = first
    facts: FunctionFacts | VariableFacts | StructFacts


def _code(line: str) -> str:
    """A source line without strings and // comments (block comments are rare on code lines)."""
    return _LINE_COMMENT.sub("", _STRINGS.sub('""', line))


def _extent(lines: list[str], first: int, kind: str) -> tuple[int, int] | None:
    """(last line, line of the opening brace) of the entity declared at `first` (1-based), from the source."""
    depth = 0
    opened = None
    for number in range(first, min(len(lines), first + 5000) + 1):
        code = _code(lines[number - 1])
        for char in code:
            if char == "{":
                depth += 1
                opened = opened or number
            elif char == "}":
                depth -= 1
                if depth == 0 and kind == "function":
                    return number, opened
            elif char == ";" and depth == 0:
                # a function prototype or a complete variable/struct definition ends here
                return number, opened or number
    return None


def entities(unit: UnitFacts, path: str, source: list[str] | None) -> list[Entity]:
    """The file's top-level entities, in line order, each with its last line."""
    found: list[Entity] = []
    seen: set[tuple[str, int]] = set()
    for kind, items in (("function", unit.functions), ("variable", [v for v in unit.variables if not v.function]),
                        ("struct", unit.structs)):
        for item in items:
            if not item.decl_line or not same_source(item.file, path) or (item.name, item.decl_line) in seen:
                continue
            seen.add((item.name, item.decl_line))
            found.append(Entity(kind, item.name, item.decl_line, 0, item.decl_line, item))
    found.sort(key=lambda e: e.first)
    for index, entity in enumerate(found):
        following = found[index + 1].first - 1 if index + 1 < len(found) else 10 ** 9
        extent = _extent(source, entity.first, entity.kind) if source else None
        if extent:
            entity.last, entity.body = extent[0], extent[1] if entity.kind == "function" else entity.first
        else:
            entity.last, entity.body = following, entity.first + 1 if entity.kind == "function" else entity.first
    return found


def holder(found: list[Entity], line: int) -> Entity | None:
    """The entity whose lines hold `line` (the innermost first: a struct inside a function's span is rare)."""
    holders = [e for e in found if e.first <= line <= e.last]
    return min(holders, key=lambda e: e.last - e.first) if holders else None


def read_source(root: Path | None, path: str) -> list[str] | None:
    if root is None:
        return None
    try:
        return (root / path).read_text(errors="replace").splitlines()
    except OSError:
        return None


def matches_original(source: list[str], removed: list[tuple[int, str]]) -> bool:
    """The file on disk is the patch's original side (its removed lines are where the patch says)."""
    return all(0 < n <= len(source) and source[n - 1].rstrip() == text.rstrip() for n, text in removed)

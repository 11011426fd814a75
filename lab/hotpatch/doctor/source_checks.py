"""From a patch's hunks to what it changes: the functions whose bodies change (the doctor's
subjects), and the changes that are not function changes at all: file-scope or static data,
a struct's layout, a function's parameters, a macro or include line, a header (every
includer changes), and moved lines in a file that uses __LINE__/__FILE__.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from lab.errors import HotpatchError
from lab.hotpatch.doctor.dwarf_facts import DebugInfo, FunctionFacts, UnitFacts
from lab.hotpatch.doctor.findings import Finding
from lab.hotpatch.doctor.patch_file import FileChange
from lab.hotpatch.doctor.source_map import Entity, entities, holder, matches_original, read_source

# Uses of __LINE__/__FILE__, directly or through the macros that expand to them (C's assert, GLib's,
# QEMU's error_setg family, which record where an error was made).
LINE_USERS = re.compile(r"\b(__LINE__|__FILE__|assert|g_assert\w*|g_return_\w*if_fail|error_setg\w*|"
                        r"error_prepend|warn_report_once|qemu_log_mask|trace_\w+|g_warn_if_\w+)\s*\(?")
_STATIC_DECL = re.compile(r"^\s*static\s+(?!inline)")
_PREPROCESSOR = re.compile(r"^\s*#\s*(define|undef|include|if|ifdef|ifndef|else|elif|endif)\b")
_DEFINED = re.compile(r"^\s*#\s*(?:define|undef)\s+(\w+)")
INCLUDERS_SHOWN = 6


@dataclass
class SourceView:
    """What a patch changes, mapped onto the target's source."""
    functions: list[tuple[FunctionFacts, FileChange, UnitFacts]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def source_view(changes: list[FileChange], debug: DebugInfo) -> SourceView:
    view = SourceView()
    for change in changes:
        if change.is_header:
            view.findings.append(_header_finding(change, debug))
            continue
        units = debug.units_for(change.path)
        if not units and not any(c.is_header or debug.units_for(c.path) for c in changes):
            raise HotpatchError(f"the patch changes {', '.join(c.path for c in changes)}, but none of the "
                                f"{debug.unit_count} compilation units in {debug.binary}'s DWARF was built from it: "
                                "is --qemu the binary this patch is for, built with -g? (the libcare build is "
                                "not: libcare-cc drops -g; give the plain build of the same source)")
        if not units:
            view.notes.append(f"{change.path}: no compilation unit of {debug.binary} was built from it "
                              "(not part of this binary, or a file of another target): its changes are not checked")
            continue
        unit = debug.unit(units[0])
        root = debug.source_root(change.path)
        source = read_source(root, change.path)
        removed = [r for h in change.hunks for r in h.removed]
        if source is not None and not matches_original(source, removed):
            view.notes.append(f"{root / change.path}: not the patch's original side (removed lines differ); "
                              "function ends estimated from the DWARF alone")
            source = None
        if source is None and root is None:
            view.notes.append(f"{change.path}: its source is not on disk; function ends estimated from the DWARF")
        found = entities(unit, change.path, source)
        _map_lines(change, unit, found, view)
        if source is not None:
            _line_macro_findings(change, found, source, view)
    return view


def _map_lines(change: FileChange, unit: UnitFacts, found: list[Entity], view: SourceView) -> None:
    changed: dict[str, FunctionFacts] = {}
    for line in change.changed_lines:
        entity = holder(found, line)
        texts = change.text_at(line)
        if entity is None:
            directives = [t for t in texts if _PREPROCESSOR.match(t)]
            if directives:
                defined = _DEFINED.match(directives[0])
                subject = defined[1] if defined else f"{change.path}:{line}"
                view.findings.append(Finding(
                    "not-a-function-change", subject, f"a preprocessor line changed at "
                    f"{change.path}:{line}: every function using what it defines changes",
                    [f"{change.path}:{line}: {t.strip()}" for t in directives], detail="macro"))
            continue
        where = f"{change.path}:{line}"
        if entity.kind == "variable":
            view.findings.append(Finding(
                "not-a-function-change", entity.name, f"file-scope variable {entity.name} changed at {where}",
                [f"DW_TAG_variable {entity.name} declared at {change.path}:{entity.first} (lines "
                 f"{entity.first}-{entity.last})", *[f"{where}: {t.strip()}" for t in texts]],
                detail="global-data"))
        elif entity.kind == "struct":
            facts = entity.facts
            view.findings.append(Finding(
                "not-a-function-change", entity.name, f"struct {entity.name} changed at {where}: its layout "
                f"({facts.byte_size} bytes, {len(facts.members)} members) is what running code and live objects use",
                [f"DW_TAG_structure_type {entity.name} at {change.path}:{entity.first}-{entity.last}: "
                 f"members {', '.join(facts.members[:8])}{' ...' if len(facts.members) > 8 else ''}",
                 *[f"{where}: {t.strip()}" for t in texts]], detail="struct-layout"))
        else:
            function = entity.facts
            if line < entity.body:
                view.findings.append(Finding(
                    "not-a-function-change", function.name, f"the signature of {function.name} changed at {where}: "
                    "callers built against the old parameters keep passing them",
                    [f"DW_TAG_subprogram {function.name} at {change.path}:{entity.first}, DW_TAG_formal_parameter: "
                     f"{', '.join(function.params) or '(none)'}", *[f"{where}: {t.strip()}" for t in texts]],
                    detail="parameters"))
            in_body = line >= entity.body
            statics = [v for v in unit.variables if v.function == function.name and v.decl_line == line]
            new_statics = [t for t in texts if in_body and _STATIC_DECL.match(t)]
            if statics:
                view.findings.append(Finding(
                    "not-a-function-change", function.name, f"static variable "
                    f"{', '.join(v.name for v in statics)} of {function.name} changed at {where}: it is data, kept "
                    "by the running process (a patch cannot initialize or replace it)",
                    [f"DW_TAG_variable {v.name} at {change.path}:{v.decl_line} (static storage)" for v in statics]
                    + [f"{where}: {t.strip()}" for t in texts], detail="static-data"))
            elif new_statics:  # libcareplus gives a new static its own data in the patch (shown loading)
                view.findings.append(Finding(
                    "not-a-function-change", function.name, f"a new static variable of {function.name} at {where}: "
                    "it lives in the patch's own data, from its initializer on when the patch loads",
                    [f"{where}: {t.strip()}" for t in texts], detail="static-data",
                    remedy="nothing to do if starting from the initializer at load time is right", ineffective=False))
            changed.setdefault(function.name, function)
    for function in changed.values():
        view.functions.append((function, change, unit))


def _line_macro_findings(change: FileChange, found: list[Entity], source: list[str], view: SourceView) -> None:
    """Moved lines after a hunk that adds or removes lines, in functions using __LINE__/__FILE__ macros."""
    changed = {f.name for f, c, _u in view.functions if c is change}
    for hunk in change.hunks:
        if hunk.shift == 0:
            continue
        moved: dict[str, list[str]] = {}
        for number in range(hunk.last_line + 1, len(source) + 1):
            match = LINE_USERS.search(source[number - 1])
            if not match:
                continue
            entity = holder(found, number)
            if entity is None or entity.kind != "function" or entity.name in changed:
                continue
            moved.setdefault(entity.name, []).append(f"{change.path}:{number} {match[1]}")
        if moved:
            names = sorted(moved)
            view.findings.append(Finding(
                "not-a-function-change", change.path,
                f"{change.path}: lines after line {hunk.last_line} move by {hunk.shift:+d}, and {len(names)} "
                f"unchanged function(s) there use __LINE__/__FILE__: they change too ({', '.join(names[:6])}"
                f"{' ...' if len(names) > 6 else ''})",
                [f"{name}: {', '.join(uses[:3])}" for name, uses in sorted(moved.items())[:8]],
                detail="line-macro",
                remedy="keep the line count of the file (e.g. put added lines on one line), or accept that "
                       "these functions are patched too (each must itself be patchable)"))


def _header_finding(change: FileChange, debug: DebugInfo) -> Finding:
    includers = debug.includers(change.path)
    shown = ", ".join(includers[:INCLUDERS_SHOWN]) + (" ..." if len(includers) > INCLUDERS_SHOWN else "")
    return Finding(
        "not-a-function-change", change.path,
        f"header {change.path} changed: {len(includers)} compilation unit(s) of the binary include it, and every "
        "one of them may change",
        [f"line tables listing {change.path}: {shown or 'none'}",
         *[f"{change.path}:{n}: {t.strip()}" for h in change.hunks for n, t in (*h.removed, *h.added)][:6]],
        detail="header")

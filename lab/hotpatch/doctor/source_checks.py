"""From a patch's hunks to what it changes: the functions whose bodies change (the doctor's
subjects), and the changes that are not function changes at all: file-scope or static data,
a struct's layout, a function's parameters, a macro or include line, a header (every
includer changes), and moved lines in a file that uses __LINE__/__FILE__. A macro's users
and the functions whose __LINE__ constants move change without being edited: they are the
finding's dependents, checked like changed functions (lab.hotpatch.doctor.doctor).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from lab.errors import HotpatchError
from lab.hotpatch.doctor.dwarf_facts import DebugInfo, FunctionFacts, UnitFacts
from lab.hotpatch.doctor.findings import Finding
from lab.hotpatch.doctor.patch_file import FileChange
from lab.hotpatch.doctor.source_map import Entity, entities, holder, matches_original, read_source

# Uses of __LINE__ that change a function's code when its lines move. libcareplus's kpatch_gensrc ignores a new
# line constant only where it goes into the argument register of a call to one of its lineno_functions
# (__assert_fail, g_assertion_message_expr, error_setg_internal, error_setg_errno_internal, QOM's cast asserts):
# assert(), g_assert(), g_assert_not_reached(), error_setg() and error_setg_errno() do not count (shown by
# suites/hotpatch/test_doctor_outcomes.py). QEMU's lock macros pass __FILE__, __LINE__ to the lock function
# (include/qemu/thread.h, main-loop.h), GLib's g_warn_if_* and g_assert_cmp*/_true/... to other functions.
LINE_USERS = re.compile(r"\b(__LINE__|qemu_(?:rec_)?mutex_(?:try)?lock|qemu_(?:rec_)?mutex_unlock|"
                        r"qemu_cond_(?:timed)?wait|qemu_mutex_lock_iothread|error_set|error_setg_file_open|"
                        r"error_setg_win32|g_warn_if_\w+|g_assert_(?!not_reached\b)\w+)\b\s*\(?")
_QUALIFIERS = re.compile(r"\b(const|volatile|restrict)\b|\s+")
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
    dependents: list[Dependents] = field(default_factory=list)


@dataclass
class Dependents:
    """The functions a finding says change without being edited (a macro's users, moved __LINE__ users, the
    callers of a static function whose parameters changed): libcare-patch-make replaces them too, so each must
    be patchable. `behaviour`: their behaviour changes (a macro), so one that only runs at start-up blocks too;
    a moved line constant changes nothing they do, so only what stops a load does."""
    finding: Finding
    names: list[str]
    unit: UnitFacts
    behaviour: bool = True
    callers_of: str = ""  # the static function whose callers (found in the machine code) are dependents too


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
        _map_lines(change, unit, found, source, view)
        if source is not None:
            _line_macro_findings(change, unit, found, source, view)
    return view


def _map_lines(change: FileChange, unit: UnitFacts, found: list[Entity], source: list[str] | None,
               view: SourceView) -> None:
    changed: dict[str, FunctionFacts] = {}
    for line in change.changed_lines:
        entity = holder(found, line)
        texts = change.text_at(line)
        if entity is None:
            directives = [t for t in texts if _PREPROCESSOR.match(t)]
            if directives:
                view.findings.append(_macro_finding(change, line, directives, found, source, unit, view))
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
            if line < entity.body and not any(f.detail == "parameters" and f.function == function.name
                                              for f in view.findings):
                view.findings.append(_parameters_finding(change, entity, unit, view))
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


def _macro_finding(change: FileChange, line: int, directives: list[str], found: list[Entity],
                   source: list[str] | None, unit: UnitFacts, view: SourceView) -> Finding:
    """A changed #define: its users in the file (by name) change, and are its dependents; any other
    preprocessor line (an #include, an #if), or a macro no function here names: every function may change."""
    where = f"{change.path}:{line}"
    evidence = [f"{where}: {t.strip()}" for t in directives]
    defined = _DEFINED.match(directives[0])
    users = _users(found, source, defined[1]) if defined and source is not None else []
    if not users:
        return Finding("not-a-function-change", defined[1] if defined else where, f"a preprocessor line changed at "
                       f"{where}: every function using what it defines changes (none here names it: through other "
                       "macros or files, it cannot be followed)", evidence, detail="macro")
    finding = Finding("not-a-function-change", defined[1], f"macro {defined[1]} changed at {where}: the functions "
                      f"using it change with it ({', '.join(users)}), and libcare-patch-make replaces them",
                      [*evidence, *[f"{name} uses {defined[1]}" for name in users]], detail="macro",
                      remedy="nothing to do if the functions using it may be replaced too; check them with --pid on "
                             "the running QEMU", ineffective=False)
    view.dependents.append(Dependents(finding, _with_inlined_callers(users, unit), unit))
    return finding


def _users(found: list[Entity], source: list[str], name: str) -> list[str]:
    """The functions of the file whose lines name `name`."""
    used = re.compile(rf"\b{re.escape(name)}\b")
    return sorted({e.name for e in found if e.kind == "function"
                   and any(used.search(source[n - 1]) for n in range(e.first, min(e.last, len(source)) + 1))})


def _with_inlined_callers(names: list[str], unit: UnitFacts) -> list[str]:
    """The functions and the callers carrying their inlined copies (whose code changes with them)."""
    out = list(names)
    for name in names:
        facts = unit.function(name)
        out += [caller for caller, _a in (facts.inlined_into if facts else []) if caller not in out]
    return out


def _parameters_finding(change: FileChange, entity: Entity, unit: UnitFacts, view: SourceView) -> Finding:
    """A changed signature: qualifiers only (no code changes); a static function (every caller is in this file,
    rebuilt and replaced with it); or an external one, whose callers elsewhere keep passing the old parameters."""
    function = entity.facts
    where = f"{change.path}:{entity.first}"
    hunk_lines = [h for h in change.hunks if any(entity.first <= n < entity.body for n, _t in (*h.removed, *h.added))]
    old = " ".join(t for h in hunk_lines for n, t in h.removed if n < entity.body)
    new = " ".join(t for h in hunk_lines for n, t in h.added if n < entity.body)
    evidence = [f"DW_TAG_subprogram {function.name} at {where}, DW_TAG_formal_parameter: "
                f"{', '.join(function.params) or '(none)'}",
                *[f"{change.path}:{n}: {t.strip()}" for h in hunk_lines for n, t in (*h.removed, *h.added)
                  if n < entity.body]]
    if old and _QUALIFIERS.sub("", old) == _QUALIFIERS.sub("", new):
        body_changed = any(entity.body <= n <= entity.last for n in change.changed_lines)
        return Finding("not-a-function-change", function.name, f"the parameters of {function.name} change only in "
                       f"qualifiers at {where}: no code changes, and libcare-patch-make finds nothing to patch in it",
                       evidence, detail="parameters", remedy="nothing to hot patch: keep the change for the next build",
                       ineffective=not body_changed)
    if function.external:
        return Finding("not-a-function-change", function.name, f"the signature of {function.name} changed at {where}: "
                       "it is external, and callers built against the old parameters keep passing them",
                       evidence, detail="parameters")
    finding = Finding("not-a-function-change", function.name, f"the signature of static {function.name} changed at "
                      f"{where}: every caller is in {change.path}, rebuilt with it, and libcare-patch-make replaces "
                      "those whose code changes", evidence, detail="parameters",
                      remedy=f"nothing to do if the callers of {function.name} may be replaced too; a pointer to it "
                             "stored elsewhere is called with the old parameters", ineffective=False)
    callers = sorted({c for c, _a in function.inlined_into if c != function.name})
    view.dependents.append(Dependents(finding, callers, unit, callers_of=function.name))
    return finding


def _line_macro_findings(change: FileChange, unit: UnitFacts, found: list[Entity], source: list[str],
                         view: SourceView) -> None:
    """Moved lines after a hunk that adds or removes lines, in functions whose code holds their line numbers."""
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
        if not moved:
            continue
        names = _with_inlined_callers(sorted(moved), unit)
        finding = Finding(
            "not-a-function-change", change.path,
            f"{change.path}: lines after line {hunk.last_line} move by {hunk.shift:+d}, and {len(names)} "
            f"unchanged function(s) there pass __LINE__ on: their code changes, and libcare-patch-make replaces "
            f"them too ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})",
            [f"{name}: {', '.join(uses[:3])}" for name, uses in sorted(moved.items())[:8]],
            detail="line-macro", ineffective=False,
            remedy="keep the line count of the file above them (e.g. put added lines on one line), or accept that "
                   "these functions are replaced too (each must itself be patchable)")
        view.findings.append(finding)
        view.dependents.append(Dependents(finding, names, unit, behaviour=False))


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

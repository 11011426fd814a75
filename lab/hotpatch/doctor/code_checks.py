"""The FAQ's kinds that the machine code and DWARF of one changed function decide: inline,
shorter than 5 bytes, recursive (direct calls and tail jumps, cycles of up to
RECURSION_DEPTH functions), never returns (DW_AT_noreturn, no path to a return, a loop
with no exit edge, a thread's start routine), and initialization only (a constructor,
registered by one through type_init/module_init, or called only from such code).
"""
from __future__ import annotations

from dataclasses import dataclass

from lab.hotpatch.doctor.dwarf_facts import FunctionFacts, UnitFacts
from lab.hotpatch.doctor.findings import ChangedFunction, Finding
from lab.hotpatch.doctor.machine_code import MachineCode

PATCH_JUMP_BYTES = 5  # libcareplus overwrites a function's entry with a 5-byte jmp rel32
RECURSION_DEPTH = 3
# QEMU's own start-up: main() calls it once, before it runs the main loop.
START_UP = {"qemu_init": "is QEMU's start-up: main() calls it once, before the main loop"}
MAIN_DEPTH = 2  # main -> qemu_default_main (through the qemu_main pointer) -> qemu_main_loop
CLONE_SUFFIXES = (".isra.", ".part.", ".constprop.", ".cold")


@dataclass
class Located:
    """A changed function and where its out-of-line copy is (None: none)."""
    facts: FunctionFacts
    address: int | None
    size: int | None
    clones: list[str]


def locate(facts: FunctionFacts, symbols: list[tuple[int, int, str]]) -> Located:
    by_name = [(a, s) for a, s, n in symbols if n == facts.name]
    clones = sorted({n for _a, _s, n in symbols if n.startswith(facts.name + ".") and
                     any(suffix in n[len(facts.name):] + "." for suffix in CLONE_SUFFIXES)})
    if facts.entry is None:  # the DWARF has no code for it: inlined everywhere (a same-named static elsewhere
        return Located(facts, None, None, clones)  # is another function)
    if facts.entry > 0:
        exact = [(a, s) for a, s, n in symbols if a == facts.entry and (n == facts.name or n in clones)]
        if exact:
            return Located(facts, *exact[0], clones)
    if len(by_name) == 1 or (by_name and facts.external):  # code in several ranges: the symbol's entry
        return Located(facts, *by_name[0], clones)
    return Located(facts, None, None, clones)


def changed_function(located: Located, file: str) -> ChangedFunction:
    return ChangedFunction(located.facts.name, file, located.facts.decl_line, located.address, located.size)


def inline_finding(located: Located, caller_findings: list[Finding]) -> Finding | None:
    """Inlined copies: libcare-patch-make compares every function's assembly, so a caller whose inlined copy
    changed is patched with it (shown by suites/hotpatch/test_doctor_outcomes.py); the patch then works only
    if every such caller is patchable itself. A caller that is not makes the patch ineffective."""
    facts = located.facts
    # A copy inside its own out-of-line body (GCC splitting the function) is the function itself.
    inlined = [(caller, addr) for caller, addr in facts.inlined_into if caller != facts.name]
    if not inlined:
        return None
    callers = sorted({caller for caller, _addr in inlined})
    copies = [f"DW_TAG_inlined_subroutine of {facts.name} in {caller} at 0x{addr:x}"
              for caller, addr in sorted(inlined, key=lambda c: c[1])[:8]]
    outline = (f"an out-of-line copy at 0x{located.address:x} serves only calls that were not inlined"
               if located.address is not None else "it has no out-of-line copy at all")
    count = f"{len(inlined)} cop{'y' if len(inlined) == 1 else 'ies'}"
    blocked = sorted({f.function for f in caller_findings})
    if blocked:
        return Finding("inline", facts.name, f"{facts.name} is inlined into {', '.join(callers)} ({count}); {outline}; "
                       f"the copy in {', '.join(blocked)} cannot be replaced",
                       [f"DW_AT_inline {facts.inline_attr} on DW_TAG_subprogram <0x{facts.die_offset:x}>", *copies,
                        *[f"caller {f.function}: {f.kind}{'/' + f.detail if f.detail else ''}: {f.summary}"
                          for f in caller_findings]],
                       remedy=f"change the code {', '.join(blocked)} calls instead, or mark {facts.name} noinline "
                              "in the original build", replaced_too=callers)
    return Finding("inline", facts.name, f"{facts.name} is inlined into {', '.join(callers)} ({count}); {outline}; "
                   "libcare-patch-make patches those callers with it (their code changes), and none of them is "
                   "flagged", [f"DW_AT_inline {facts.inline_attr} on DW_TAG_subprogram <0x{facts.die_offset:x}>",
                               *copies],
                   remedy=f"nothing to do if {', '.join(callers)} may be replaced too; check them with --pid on the "
                          "running QEMU", ineffective=False, replaced_too=callers)


def caller_findings(located: Located, unit: UnitFacts, code: MachineCode,
                    symbols: list[tuple[int, int, str]]) -> list[Finding]:
    """What makes the callers carrying an inlined copy of the function unpatchable themselves."""
    callers = sorted({c for c, _addr in located.facts.inlined_into} - {located.facts.name})
    return blocking_findings(callers, unit, code, symbols)


def blocking_findings(names: list[str], unit: UnitFacts, code: MachineCode, symbols: list[tuple[int, int, str]], *,
                      behaviour: bool = True) -> list[Finding]:
    """What makes functions replaced along with a change unpatchable (ineffective findings only). `behaviour`
    False: their code changes but not what they do (a line constant), so running only at start-up is harmless."""
    out = []
    for name in names:
        facts = unit.function(name)
        if facts is None:
            continue
        where = locate(facts, symbols)
        checks = [too_small_finding(where), recursion_finding(where, code, symbols),
                  *never_returns_findings(where, code, unit, symbols)]
        if behaviour:
            checks.append(init_finding(where, code, unit, symbols))
        out += [f for f in checks if f is not None and f.ineffective]
    return out


def callers_in_unit(name: str, unit: UnitFacts, code: MachineCode, symbols: list[tuple[int, int, str]]) -> list[str]:
    """The functions of the unit with a direct call to `name`'s out-of-line copy."""
    facts = unit.function(name)
    target = locate(facts, symbols).address if facts else None
    if target is None:
        return []
    sizes = {a: s for a, s, _n in symbols}
    return sorted({f.name for f in unit.functions if f.entry and f.entry > 0 and f.name != name
                   and any(t == target for _site, t in code.calls(f.entry, sizes.get(f.entry, 0)))})


def too_small_finding(located: Located) -> Finding | None:
    if located.size is None or located.size >= PATCH_JUMP_BYTES:
        return None
    return Finding("too-small", located.facts.name, f"{located.facts.name} is {located.size} byte(s) long, "
                   f"shorter than the {PATCH_JUMP_BYTES}-byte jump libcareplus writes at its entry",
                   [f"symbol {located.facts.name} at 0x{located.address:x}, st_size {located.size}"])


def recursion_finding(located: Located, code: MachineCode, symbols: list[tuple[int, int, str]]) -> Finding | None:
    if located.address is None:
        return None
    sizes = {a: s for a, s, _n in symbols}
    start = located.address
    paths = {start: [start]}
    frontier = [start]
    for _depth in range(RECURSION_DEPTH):
        following = []
        for node in frontier:
            for site, target in code.calls(node, sizes.get(node, 0)):
                if target == start:
                    chain = " -> ".join(code.name_of(a) for a in [*paths[node], start])
                    kind = "calls itself" if node == start else f"calls itself through {chain}"
                    # New calls, recursive ones too, enter the new code (suites/hotpatch/test_doctor_outcomes.py);
                    # only a recursion in progress keeps the old, and libcare-ctl refuses while one is.
                    return Finding("recursive", located.facts.name, f"{located.facts.name} {kind}: a recursion in "
                                   "progress while the patch loads keeps running the old code (libcare-ctl's safety "
                                   "check refuses then; --pid shows whether one is)",
                                   [f"call at 0x{site:x} in {code.name_of(node)} to 0x{start:x} "
                                    f"({located.facts.name})", f"cycle: {chain}"],
                                   remedy="load it while no call is in progress (check with --pid), or patch a "
                                          "non-recursive caller", ineffective=False)
                if target in sizes and target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    return None


def never_returns_findings(located: Located, code: MachineCode, unit: UnitFacts,
                           symbols: list[tuple[int, int, str]]) -> list[Finding]:
    facts = located.facts
    out = []
    if facts.noreturn:
        # Entered anew by every call (it leaves by exit or longjmp): a patch takes effect on the next call
        # (suites/hotpatch/test_doctor_outcomes.py). What never leaves is a loop a thread stays in, below.
        out.append(Finding("never-returns", facts.name, f"{facts.name} is declared noreturn: it never returns to its "
                           "caller, but every call enters it anew, so the next call runs the new code",
                           [f"DW_AT_noreturn on DW_TAG_subprogram <0x{facts.die_offset:x}> {facts.name}"],
                           detail="noreturn", remedy="nothing to do unless a thread stays in it (see the loop and "
                           "thread findings, and --pid)", ineffective=False))
    if located.address is None:
        return out
    loops = code.loops_without_exit(located.address, located.size)
    if loops:
        returns = code.can_return(located.address, located.size)
        out.append(Finding(
            "never-returns", facts.name,
            f"{facts.name} has {len(loops)} loop(s) with no exit edge" + ("" if returns else "; it never returns"),
            [f"loop 0x{first:x}-0x{last:x}: no jump, return or tail call leaves it" for first, last in loops],
            detail="infinite-loop"))
    chain = _from_main(located.address, code, symbols)
    waiting = code.waiting_loops(located.address, located.size) if chain else []
    if waiting:
        out.append(Finding(
            "never-returns", facts.name, f"{facts.name} is main()'s loop ({' -> '.join(chain)}): the main thread "
            "is in it from start-up until QEMU quits",
            [f"call path {' -> '.join(chain)}",
             *[f"loop 0x{first:x}-0x{last:x} waits in {callee}" for first, last, callee in waiting]],
            detail="main-loop"))
    starters = []
    for function in unit.functions:
        if function.entry and function.entry > 0:
            size = next((s for a, s, _n in symbols if a == function.entry), 0)
            starters += [(function.name, site, starter) for site, starter, routine
                         in code.threads_started(function.entry, size) if routine == located.address]
    if starters:
        out.append(Finding(
            "never-returns", facts.name, f"{facts.name} is a thread's start routine: the thread runs in it for "
            "as long as it lives",
            [f"{starter}(..., {facts.name}, ...) at 0x{site:x} in {caller}" for caller, site, starter in starters],
            detail="thread-entry"))
    return out


def init_finding(located: Located, code: MachineCode, unit: UnitFacts,
                 symbols: list[tuple[int, int, str]]) -> Finding | None:
    """A constructor, a function a constructor registers, or one inlined only into such functions."""
    name = located.facts.name
    if located.address is not None:
        reason = _start_up_only(located.address, name, code, symbols)
        if reason:
            summary, evidence = reason
            return Finding("init-only", name, f"{name} {summary}", [evidence])
        return None
    callers = sorted({caller for caller, _addr in located.facts.inlined_into} - {name})
    if not callers:
        return None
    reasons = []
    for caller in callers:
        address = next((a for a, _s, n in symbols if n == caller), None)
        reason = _start_up_only(address, caller, code, symbols) if address is not None else None
        if reason is None:
            return None
        reasons.append(f"inlined into {caller}, which {reason[0]}: {reason[1]}")
    return Finding("init-only", name, f"{name} lives only inlined into start-up code ({', '.join(callers)})", reasons)


def _start_up_only(address: int, name: str, code: MachineCode,
                   symbols: list[tuple[int, int, str]]) -> tuple[str, str] | None:
    """(summary, evidence) when the function at `address` runs only at start-up, else None."""
    if name in START_UP:
        return START_UP[name], f"{name} at 0x{address:x}"
    constructors = code.constructors
    if address in constructors:
        return "is a constructor: it ran once, before main()", f".init_array holds 0x{address:x} ({name})"
    sizes = {a: s for a, s, _n in symbols}
    for ctor in constructors:
        for site, target in (*code.address_taken(ctor, sizes.get(ctor, 0)), *code.calls(ctor, sizes.get(ctor, 0))):
            if target == address:
                return (f"is registered at start-up by the constructor {code.name_of(ctor)} (type_init/module_init "
                        "and friends): it runs once, while QEMU initializes",
                        f".init_array holds 0x{ctor:x} ({code.name_of(ctor)}); it takes 0x{address:x} ({name}) "
                        f"at 0x{site:x}")
    return None


def _from_main(address: int, code: MachineCode, symbols: list[tuple[int, int, str]]) -> list[str]:
    """The call path main -> ... -> the function within MAIN_DEPTH calls, or [] (direct and through pointers)."""
    sizes = {a: s for a, s, _n in symbols}
    main = next((a for a, _s, n in symbols if n == "main"), None)
    if main is None or address == main:
        return []
    paths = {main: ["main"]}
    frontier = [main]
    for _depth in range(MAIN_DEPTH):
        following = []
        for node in frontier:
            for _site, target in code.calls(node, sizes.get(node, 0)):
                if target in sizes and target not in paths:
                    paths[target] = [*paths[node], code.name_of(target)]
                    if target == address:
                        return paths[target]
                    following.append(target)
        frontier = following
    return []

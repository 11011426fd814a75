"""The target binary's machine code, disassembled with capstone (x86-64): a function's
direct calls and tail jumps, the addresses it takes (rip-relative lea), the functions it
starts as threads, whether it can return at all and which of its loops have no way out,
and the constructors in .init_array. Names come from the symbol table, PLT entries named
through .rela.plt, so `call pthread_create@plt` reads as such.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import cached_property

import capstone
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

EXIT = -1  # the node "left the function" in the control-flow graph
_TARGET = re.compile(r"^(?:qword ptr )?0x([0-9a-f]+)$")
_RIP = re.compile(r"\[rip ([+-]) 0x([0-9a-f]+)\]")
# Never come back (glibc, GLib, QEMU); with the functions the DWARF marks noreturn.
NORETURN = frozenset({"abort", "exit", "_exit", "__assert_fail", "__stack_chk_fail", "pthread_exit", "longjmp",
                      "siglongjmp", "__longjmp_chk", "g_assertion_message_expr", "g_assertion_message",
                      "qemu_thread_exit", "cpu_loop_exit", "cpu_loop_exit_restore", "cpu_loop_exit_noexc"})
WAITS = re.compile(r"wait|poll|sleep|select|iteration")
THREAD_STARTERS = frozenset({"pthread_create", "qemu_thread_create", "g_thread_new", "g_thread_try_new"})
# The register holding a starter's start routine: pthread_create / qemu_thread_create 3rd, g_thread_new 2nd.
START_ROUTINE_REGISTER = {"pthread_create": "rdx", "qemu_thread_create": "rdx", "g_thread_new": "rsi",
                          "g_thread_try_new": "rsi"}


@dataclass(frozen=True)
class Insn:
    address: int
    size: int
    mnemonic: str
    operands: str

    @property
    def end(self) -> int:
        return self.address + self.size

    def direct_target(self) -> int | None:
        match = _TARGET.match(self.operands)
        return int(match[1], 16) if match else None

    def rip_target(self) -> int | None:
        match = _RIP.search(self.operands)
        if not match:
            return None
        disp = int(match[2], 16)
        return self.end + (disp if match[1] == "+" else -disp)


class MachineCode:
    def __init__(self, elf: ELFFile, symbols: list[tuple[int, int, str]], noreturn: set[str] = frozenset()):
        self.elf = elf
        self.symbols = symbols
        self.noreturn = NORETURN | set(noreturn)
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._by_start = {start: (start, size, name) for start, size, name in symbols}

    # -- bytes and names ----------------------------------------------------------

    def _read(self, address: int, size: int) -> bytes:
        for segment in self.elf.iter_segments():
            if segment["p_type"] == "PT_LOAD" and segment["p_vaddr"] <= address < segment["p_vaddr"] + \
                    segment["p_filesz"]:
                offset = segment["p_offset"] + address - segment["p_vaddr"]
                self.elf.stream.seek(offset)
                return self.elf.stream.read(size)
        return b""

    @cached_property
    def plt_names(self) -> dict[int, str]:
        """PLT entry address -> the symbol it jumps to (its GOT slot's .rela.plt entry)."""
        slots = {}
        for section in self.elf.iter_sections():
            if isinstance(section, RelocationSection) and section.name in (".rela.plt", ".rel.plt"):
                symtab = self.elf.get_section(section["sh_link"])
                for reloc in section.iter_relocations():
                    slots[reloc["r_offset"]] = symtab.get_symbol(reloc["r_info_sym"]).name
        names = {}
        for section_name in (".plt", ".plt.sec"):
            section = self.elf.get_section_by_name(section_name)
            if section is None:
                continue
            step = 16
            for start in range(section["sh_addr"], section["sh_addr"] + section["sh_size"], step):
                for insn in self.disassemble(start, step):
                    if insn.mnemonic.endswith("jmp") and insn.rip_target() in slots:
                        names[start] = slots[insn.rip_target()]
        return names

    def name_of(self, address: int) -> str:
        if address in self._by_start:
            return self._by_start[address][2]
        return self.plt_names.get(address, f"0x{address:x}")

    def disassemble(self, start: int, size: int) -> list[Insn]:
        return [Insn(*row) for row in self._cs.disasm_lite(self._read(start, size), start)]

    # -- facts about one function -------------------------------------------------

    def pointer_at(self, address: int) -> int | None:
        """The function pointer an initialized data slot holds (a PIE's R_X86_64_RELATIVE addend, else its bytes)."""
        if address in self._relative:
            return self._relative[address]
        raw = self._read(address, 8)
        value = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        return value if value in self._by_start else None

    @cached_property
    def _relative(self) -> dict[int, int]:
        out = {}
        for section in self.elf.iter_sections():
            if isinstance(section, RelocationSection) and section.is_RELA() and section.name != ".rela.plt":
                for reloc in section.iter_relocations():
                    if reloc["r_info_type"] == 8:  # R_X86_64_RELATIVE
                        out[reloc["r_offset"]] = reloc["r_addend"]
        return out

    def calls(self, start: int, size: int) -> list[tuple[int, int]]:
        """(call site, target) of every direct call and tail jump out of the function, and of those made
        through an initialized function pointer (QEMU's main() jumps through `qemu_main`)."""
        out = []
        for insn in self.disassemble(start, size):
            target = insn.direct_target()
            if target is None and insn.mnemonic in ("call", "jmp") and insn.operands.startswith("qword ptr [rip"):
                target = self.pointer_at(insn.rip_target())
            if target is None:
                continue
            if insn.mnemonic == "call" or (insn.mnemonic == "jmp" and not start <= target < start + size):
                out.append((insn.address, target))
        return out

    def address_taken(self, start: int, size: int) -> list[tuple[int, int]]:
        """(site, address) of every rip-relative lea: functions and data this one takes the address of."""
        return [(i.address, i.rip_target()) for i in self.disassemble(start, size)
                if i.mnemonic == "lea" and i.rip_target() is not None]

    def threads_started(self, start: int, size: int) -> list[tuple[int, str, int]]:
        """(call site, starter, start routine) for each thread this function starts with a known routine."""
        insns = self.disassemble(start, size)
        out = []
        for index, insn in enumerate(insns):
            target = insn.direct_target() if insn.mnemonic in ("call", "jmp") else None
            starter = self.name_of(target) if target is not None else ""
            if starter not in THREAD_STARTERS:
                continue
            register = START_ROUTINE_REGISTER[starter]
            for earlier in reversed(insns[max(0, index - 12):index]):
                if earlier.mnemonic == "lea" and earlier.operands.startswith(register + ","):
                    out.append((insn.address, starter, earlier.rip_target()))
                    break
        return out

    def flow(self, start: int, size: int) -> dict[int, list[int]]:
        """The function's control-flow graph over instructions (EXIT: returned, tail-called or left)."""
        insns = self.disassemble(start, size)
        inside = {i.address for i in insns}
        graph: dict[int, list[int]] = {}
        for insn in insns:
            nxt = insn.end if insn.end in inside else EXIT
            target = insn.direct_target()
            m = insn.mnemonic.replace("notrack ", "").replace("bnd ", "")
            if m in ("ret", "retq", "iretq", "sysret"):
                succ = [EXIT]
            elif m in ("ud2", "hlt", "int3"):
                succ = []
            elif m == "jmp":
                if target is None:
                    succ = [EXIT]  # indirect (a switch table or a call through a pointer): may leave
                elif target in inside:
                    succ = [target]
                else:
                    succ = [] if self.name_of(target) in self.noreturn else [EXIT]
            elif m.startswith("j") or m.startswith("loop"):
                succ = [target if target in inside else EXIT, nxt] if target is not None else [EXIT, nxt]
            elif m == "call" and target is not None and self.name_of(target) in self.noreturn:
                succ = []
            else:
                succ = [nxt]
            graph[insn.address] = succ
        return graph

    def can_return(self, start: int, size: int) -> bool:
        graph = self.flow(start, size)
        return EXIT in _reachable(graph, start)

    def waiting_loops(self, start: int, size: int) -> list[tuple[int, int, str]]:
        """(first, last, callee) of each loop that calls a function that waits (poll, wait, sleep...):
        the shape of a main loop or a service thread's loop."""
        calls = {site: target for site, target in self.calls(start, size)}
        out = []
        for component in _cycles(self.flow(start, size)):
            waits = [self.name_of(calls[a]) for a in sorted(component) if a in calls
                     and WAITS.search(self.name_of(calls[a]))]
            if waits:
                out.append((min(component), max(component), waits[0]))
        return sorted(out)

    def loops_without_exit(self, start: int, size: int) -> list[tuple[int, int]]:
        """[first, last] instruction address of each loop no edge leaves: no jump out of it, no return,
        no tail call (a loop whose way out ends the process, as in `-cpu help`'s listing, has an edge out)."""
        graph = self.flow(start, size)
        return sorted((min(c), max(c)) for c in _cycles(graph)
                      if all(succ in c for node in c for succ in graph.get(node, [])))

    # -- facts about the whole binary ---------------------------------------------

    @cached_property
    def constructors(self) -> list[int]:
        """Function addresses in .init_array (static constructors: QEMU's type_init/module_init land here)."""
        section = self.elf.get_section_by_name(".init_array")
        if section is None:
            return []
        base, size = section["sh_addr"], section["sh_size"]
        pointers = list(struct.unpack(f"<{size // 8}Q", section.data()))
        # A PIE may leave the slots 0 and put the address in a R_X86_64_RELATIVE addend.
        pointers = [self._relative.get(base + 8 * i, p) for i, p in enumerate(pointers)]
        return [p for p in pointers if p not in (0, 2 ** 64 - 1)]


def _reachable(graph: dict[int, list[int]], start: int) -> set[int]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, []))
    return seen


def _cycles(graph: dict[int, list[int]]) -> list[set[int]]:
    """Strongly connected components that contain a cycle (Tarjan's, iterative)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    out: list[set[int]] = []
    work: list[tuple[int, object]] = []

    def visit(node: int) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter(graph.get(node, []))))

    for root in graph:
        if root in index:
            continue
        visit(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ == EXIT or succ not in graph:
                    continue
                if succ not in index:
                    visit(succ)
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, []):
                    out.append(component)
    return out

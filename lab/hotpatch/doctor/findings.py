"""The doctor's findings: one kind per item of the libcareplus FAQ and openEuler's LibcarePlus
guide, each with the FAQ's own wording, a remedy, and whether it makes the patch ineffective
(the doctor's exit status), plus the report that holds them, as text or JSON.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# kind -> (the FAQ's / guide's wording, the remedy, whether the patch then fails to work)
KINDS: dict[str, tuple[str, str, bool]] = {
    "inline": (
        "a patch that loads but does not work usually changes a function that is inlined",
        "change the callers it is inlined into (they carry their own copy), or mark it noinline in the original build",
        True),
    "recursive": (
        "a patch that loads but does not work usually changes a function that is recursive",
        "patch a non-recursive caller or callee instead; a recursion in progress keeps running the old code",
        True),
    "never-returns": (
        "a patch that loads but does not work usually changes a function that is an infinite loop or never returns",
        "patch the functions the loop calls instead; a thread that never leaves the function never reaches the new code",
        True),
    "init-only": (
        "a patch that loads but does not work usually changes an initialization function",
        "a running process has already run it: restart QEMU, or patch the code that runs afterwards",
        True),
    "too-small": (
        "functions shorter than 5 bytes cannot be patched (the jump libcareplus writes is 5 bytes)",
        "patch its callers, or make it larger in the original build (e.g. not a bare `ret`)",
        True),
    "not-a-function-change": (
        "not supported: replaced global variables, changed data structures, changed headers, changed parameters, "
        "files using __LINE__/__FILE__",
        "make the change inside function bodies only; data, layouts and signatures need a QEMU restart",
        True),
    "buildid": (
        "a patch that will not load was built for another QEMU build (buildID)",
        "build the patch against the exact binary that runs (libcare-patch-make --buildid of it), or run that build",
        True),
}


@dataclass
class Finding:
    kind: str
    function: str  # the changed function (or data, header, file) it is about
    summary: str  # one line: what was seen
    evidence: list[str] = field(default_factory=list)
    detail: str = ""  # sub-kind, e.g. global-data, struct-layout, header, parameters, line-macro, thread-entry
    faq: str = ""
    remedy: str = ""
    ineffective: bool = True
    replaced_too: list[str] = field(default_factory=list)  # unedited functions whose code changes with it

    def __post_init__(self):
        faq, remedy, ineffective = KINDS[self.kind]
        self.faq = self.faq or faq
        self.remedy = self.remedy or remedy
        self.ineffective = self.ineffective and ineffective

    def blocked_by(self, blocking: list[Finding]) -> None:
        """The functions this finding changes too include unpatchable ones: it makes the patch ineffective."""
        names = sorted({f.function for f in blocking})
        self.ineffective = True
        self.summary += f"; {', '.join(names)} cannot be replaced"
        self.evidence += [f"{f.function}: {f.kind}{'/' + f.detail if f.detail else ''}: {f.summary}" for f in blocking]
        self.remedy = f"leave {', '.join(names)} unchanged, or patch the code they call instead"


@dataclass
class ChangedFunction:
    name: str
    file: str
    line: int
    address: int | None
    size: int | None


@dataclass
class DoctorReport:
    patch: str
    binary: str
    buildid: str
    changed: list[ChangedFunction] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not or could not be checked, and why
    unchecked_files: list[str] = field(default_factory=list)  # the patch's .c files this binary was not built from
    source_patch: bool = True  # False for a .kpatch file (only its buildID is checked)

    @property
    def ineffective(self) -> bool:
        return any(f.ineffective for f in self.findings)

    @property
    def nothing_checked(self) -> bool:
        """No verdict, never "clean": a source patch with a file this binary was not built from (its changes were
        not checked), or one whose changes reach no function and no finding (a patch that would do nothing)."""
        if not self.source_patch or self.ineffective:
            return False
        return bool(self.unchecked_files) or (not self.changed and not self.findings)

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def replaced(self) -> list[str]:
        """What libcare-patch-make will replace, as far as the doctor sees: the changed functions that have an
        out-of-line copy, and the functions the findings say change with them."""
        names = {c.name for c in self.changed if c.address is not None}
        return sorted(names.union(*(f.replaced_too for f in self.findings)))

    def as_dict(self) -> dict:
        data = asdict(self)
        data["ineffective"] = self.ineffective
        data["nothing_checked"] = self.nothing_checked
        data["replaced"] = self.replaced()
        return data

    def text(self) -> str:
        out = [f"hot patch doctor: {self.patch} against {self.binary} (buildID {self.buildid})"]
        for fn in self.changed:
            where = f"0x{fn.address:x}, {fn.size} bytes" if fn.address is not None else "no out-of-line copy"
            out.append(f"changed function: {fn.name} ({fn.file}:{fn.line}, {where})")
        for finding in self.findings:
            label = "FAIL" if finding.ineffective else "WARN"
            out.append(f"{label} {finding.kind}{'/' + finding.detail if finding.detail else ''}: {finding.summary}")
            out.extend(f"       evidence: {line}" for line in finding.evidence)
            if finding.replaced_too:
                out.append(f"       replaced too: {', '.join(finding.replaced_too)}")
            out.append(f"       FAQ: {finding.faq}")
            out.append(f"       -> {finding.remedy}")
        out.extend(f"note: {note}" for note in self.notes)
        failing = sum(f.ineffective for f in self.findings)
        if self.nothing_checked:
            why = (f"{', '.join(self.unchecked_files)} not part of this binary (is it the one the patch is for?)"
                   if self.unchecked_files else "the patch changes no code of this binary: loaded, it would do nothing")
            out.append(f"verdict: NOT CHECKED: {why}")
            return "\n".join(out)
        out.append(f"verdict: {'INEFFECTIVE' if failing else 'no finding makes the patch ineffective'}"
                   + (f" ({failing} finding{'s' if failing != 1 else ''})" if failing else ""))
        return "\n".join(out)

"""The mutant corpus: patches against the QEMU source the lab builds, each with a header that says what it
breaks and which check should catch it (suites/mutants/patches/README.md has the table)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ConfigError

CORPUS = Path(__file__).resolve().parents[2] / "suites" / "mutants" / "patches"
FIELDS = ("Mutant", "Breaks", "Symptom", "Class", "Expect", "Upstream")
NEGATIVE = "negative-control"


@dataclass(frozen=True)
class Mutant:
    id: str
    path: Path
    breaks: str
    symptom: str
    kind: str  # the Class: ram-not-sent, final-sync, ..., negative-control
    expect: str
    upstream: str

    @property
    def negative(self) -> bool:
        return self.kind == NEGATIVE


def read_mutant(path: Path) -> Mutant:
    header = re.split(r"^(?:diff |--- )", path.read_text(errors="replace"), maxsplit=1, flags=re.M)[0]
    fields: dict[str, str] = {}
    current = None
    for line in header.splitlines():
        m = re.match(r"^(\w+):\s*(.*)$", line)
        if m and m[1] in FIELDS:
            current = m[1]
            fields[current] = m[2].strip()
        elif current and line.strip():
            fields[current] += " " + line.strip()
    missing = [f for f in FIELDS if not fields.get(f)]
    if missing:
        raise ConfigError(f"{path}: the mutant's header lacks {', '.join(missing)} (suites/mutants/patches/README.md)")
    return Mutant(fields["Mutant"], path, fields["Breaks"], fields["Symptom"], fields["Class"], fields["Expect"],
                  fields["Upstream"])


def load_corpus(directory: Path = CORPUS, only: list[str] | None = None) -> list[Mutant]:
    mutants = [read_mutant(p) for p in sorted(Path(directory).glob("*.patch"))]
    ids = [m.id for m in mutants]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"{directory}: a mutant id is used twice")
    if only:
        unknown = sorted(set(only) - set(ids))
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: no such mutant in {directory} (there: {', '.join(ids)})")
        mutants = [m for m in mutants if m.id in only]
    if not mutants:
        raise ConfigError(f"{directory}: no mutant (*.patch) to run")
    return mutants

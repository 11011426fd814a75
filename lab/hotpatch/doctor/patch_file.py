"""A source patch (unified diff, as libcare-patch-make takes it) read into what the doctor
needs: per changed file, the changed lines on the original side (removed lines, and the
line an addition goes after), the text added and removed, and how far later lines move.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import HotpatchError

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class Hunk:
    old_start: int
    new_start: int
    removed: list[tuple[int, str]] = field(default_factory=list)  # (original line number, text)
    added: list[tuple[int, str]] = field(default_factory=list)  # (original line it goes after, text)

    @property
    def shift(self) -> int:
        """How many lines everything after this hunk moves."""
        return len(self.added) - len(self.removed)

    @property
    def changed_lines(self) -> list[int]:
        """Original-side lines this hunk touches: removed lines, and for additions the line they follow."""
        return sorted({n for n, _ in self.removed} | {n for n, _ in self.added})

    @property
    def last_line(self) -> int:
        return max(self.changed_lines, default=self.old_start)


@dataclass
class FileChange:
    path: str  # as in the source tree, a/ b/ prefixes gone
    hunks: list[Hunk]

    @property
    def is_header(self) -> bool:
        return self.path.endswith((".h", ".inc", ".h.inc"))

    @property
    def changed_lines(self) -> list[int]:
        return sorted({n for h in self.hunks for n in h.changed_lines})

    def text_at(self, line: int) -> list[str]:
        """The removed and added text at an original line."""
        return [t for h in self.hunks for n, t in (*h.removed, *h.added) if n == line]


def _strip_prefix(name: str) -> str:
    name = name.split("\t", 1)[0].strip()
    return name[2:] if name[:2] in ("a/", "b/") else name


def parse_patch(text: str, origin: str = "patch") -> list[FileChange]:
    """Every file the unified diff changes; HotpatchError when it changes none."""
    changes: list[FileChange] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            new = _strip_prefix(lines[i + 1][4:])
            path = _strip_prefix(lines[i][4:]) if new == "/dev/null" else new
            change = FileChange(path, [])
            changes.append(change)
            i += 2
            continue
        match = _HUNK.match(lines[i])
        if match and changes:
            hunk = Hunk(int(match[1]), int(match[3]))
            old_left = int(match[2]) if match[2] is not None else 1
            new_left = int(match[4]) if match[4] is not None else 1
            old_line = hunk.old_start
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0):
                line = lines[i]
                tag, body = line[:1], line[1:]
                if tag == "-":
                    hunk.removed.append((old_line, body))
                    old_line += 1
                    old_left -= 1
                elif tag == "+":
                    hunk.added.append((max(old_line - 1, 1), body))
                    new_left -= 1
                elif tag == "\\":
                    pass  # "\ No newline at end of file"
                else:
                    old_line += 1
                    old_left -= 1
                    new_left -= 1
                i += 1
            changes[-1].hunks.append(hunk)
            continue
        i += 1
    changes = [c for c in changes if c.hunks]
    if not changes:
        raise HotpatchError(f"{origin}: no unified diff hunk in it (a patch as `diff -u` or `git diff` writes it)")
    return changes


def read_patch(path: str | os.PathLike) -> list[FileChange]:
    """parse_patch of a file; a missing or unreadable file is one HotpatchError line."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        raise HotpatchError(f"{path}: no such patch file; give a unified diff (or a .kpatch file)") from None
    except OSError as exc:
        raise HotpatchError(f"{path}: cannot read the patch ({exc.strerror})") from None
    return parse_patch(text, str(path))

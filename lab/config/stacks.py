"""lab.yaml `stacks:`: named hypervisor stacks (a QEMU build and a libvirt build), and which host runs which.

    stacks:
      backports:                    # a name of your choosing
        source: archive             # system | archive | build | path | git (tree: PATH, commit: REV)
        suite: bookworm-backports   # archive: the distro suite, on the mirror apt already uses
        qemu: 10.0.2                # upstream version, or the exact package version
        libvirt: 11.3.0             # leave out to keep the installed one
    hosts:
      - {name: hv2, address: 198.19.96.12, stack: backports}   # default: system

`system` is built in: the installed packages. Every error is one line naming the field,
e.g. ``hosts[1].stack: unknown stack 'backprots' (stacks: system, backports)``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ValidationInfo, field_validator, model_validator

from lab.config.common import AbsPath, NonEmpty, rule
from lab.config.validation import Model, problem

SYSTEM = "system"
SOURCES = ("system", "archive", "build", "path", "git")
STACK_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
# An upstream version (10.0.2) or a Debian package version (1:10.0.2+ds-2+deb13u1~bpo12+1).
VERSION = re.compile(r"(\d+:)?\d[0-9A-Za-z.+~-]*")
DEFAULT_SUITE = "bookworm-backports"

StackName = Annotated[str, rule(STACK_NAME.fullmatch,
                                "is not a stack name (lowercase letter, then letters, digits, '-'; at most 32)")]


def _not_a_number(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # YAML reads 7.2 as a number
        raise ValueError(f"{value!r} is a number, not a version: quote it (qemu: '{value}')")
    return value


Version = Annotated[str, BeforeValidator(_not_a_number),
                    rule(VERSION.fullmatch, "is not a version (like 10.0.2 or 1:10.0.2+ds-2+deb13u1~bpo12+1)")]
Mirror = Annotated[NonEmpty, rule(lambda v: re.match(r"(https?|file)://\S+$", v),
                                  "is not a mirror URL (like http://deb.debian.org/debian)")]
# Which fields each source takes besides `source` (the rest must be left out).
TAKES = {"system": (), "archive": ("suite", "mirror", "qemu", "libvirt"),
         "build": ("suite", "mirror", "qemu", "patches"), "path": ("path", "qemu", "libvirt"),
         "git": ("tree", "commit")}


class StackSpec(Model):
    """One stack: where its QEMU and libvirt come from."""

    source: Literal["system", "archive", "build", "path", "git"]
    suite: NonEmpty | None = None  # archive: default bookworm-backports; build: default the distribution's own
    mirror: Mirror | None = None  # archive: default the mirror apt uses for the distribution
    qemu: Version | None = None  # archive: the version to fetch; build: the source version; path: what it must report
    libvirt: Version | None = None  # the same for libvirt; archive/path: left out keeps the installed one
    path: AbsPath | None = None  # path: a tree with usr/ inside (dpkg -x, or make install DESTDIR=)
    patches: tuple[NonEmpty, ...] = ()  # build: patch files applied to the QEMU source, in order
    tree: AbsPath | None = None  # git: a QEMU git working tree (its history; the working files are not read)
    commit: NonEmpty | None = None  # git: the commit (or a ref) of `tree` to build

    @field_validator("patches")
    @classmethod
    def _patches_from_the_lab_file(cls, patches: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """A relative patch path is relative to the lab.yaml naming it (so a committed lab file can name the
        repo's patches); without a file to be relative to, it must be absolute."""
        source = (info.context or {}).get("source", "")
        base = Path(source).resolve().parent if source.startswith(("/", ".")) or Path(source).is_file() else None
        resolved = []
        for patch in patches:
            if not patch.startswith("/"):
                if base is None:
                    raise ValueError(f"{patch!r} is not an absolute path (and there is no lab file to be relative to)")
                patch = str(base / patch)
            resolved.append(patch)
        return tuple(resolved)

    @model_validator(mode="after")
    def _fields_fit_the_source(self) -> StackSpec:
        for name in ("suite", "mirror", "qemu", "libvirt", "path", "patches"):
            if getattr(self, name) not in (None, ()) and name not in TAKES[self.source]:
                raise problem(name, f"a source: {self.source} stack takes no {name} "
                                    f"(it takes: {', '.join(TAKES[self.source]) or 'nothing else'})")
        if self.source == "archive" and self.qemu is None and self.libvirt is None:
            raise problem("qemu", "missing: an archive stack names a qemu or a libvirt version (or both)")
        if self.source == "build" and self.qemu is None:
            raise problem("qemu", "missing: the QEMU source version to build (like 7.2)")
        if self.source == "path" and self.path is None:
            raise problem("path", "missing: the tree to run (a directory with usr/ inside)")
        if self.source == "git" and (self.tree is None or self.commit is None):
            raise problem("tree" if self.tree is None else "commit",
                          "missing: a git stack names the QEMU git tree and the commit to build")
        return self

    @property
    def archive_suite(self) -> str:
        return self.suite or DEFAULT_SUITE


SYSTEM_SPEC = StackSpec(source="system")


def check_stacks(stacks: dict[str, StackSpec]) -> dict[str, StackSpec]:
    """`system` is the built-in name for the installed packages; it cannot be redefined as something else."""
    spec = stacks.get(SYSTEM)
    if spec is not None and spec.source != SYSTEM:
        raise problem(SYSTEM, "is built in (the installed packages); give this stack another name")
    return stacks


def check_host_stack(index: int, stack: str, stacks: dict[str, StackSpec], backend: str) -> None:
    """A host's stack is `system` or one lab.yaml defines; hosts of their own (static, Vagrant) take archive stacks
    only: the playbook installs them (role `stack`), the embedded lab mounts any source per host."""
    if stack != SYSTEM and stack not in stacks:
        known = ", ".join([SYSTEM, *[s for s in stacks if s != SYSTEM]])
        raise problem((index, "stack"), f"unknown stack {stack!r} (stacks: {known})")
    source = stacks[stack].source if stack != SYSTEM else SYSTEM
    if backend in ("static", "vagrant") and source not in (SYSTEM, "archive"):
        raise problem((index, "stack"), f"stack {stack!r} (source: {source}) cannot be put on a {backend} host: "
                                        "the playbook installs archive stacks only (a suite and versions); "
                                        "name one, or use backend: embedded")


def stack_spec(name: str, stacks: dict[str, StackSpec]) -> StackSpec:
    return stacks.get(name, SYSTEM_SPEC) if name == SYSTEM else stacks[name]

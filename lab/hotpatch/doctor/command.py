"""`python -m lab hotpatch doctor PATCH [--qemu BINARY_OR_BUILD] [--target BINARY] [--pid PID] [--json]`.

Exit status: 0 no finding makes the patch ineffective, 1 one does, 2 bad input (one line), 3 nothing of the
patch could be checked against this binary (none of its files is part of it): never "clean".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lab.config.hotpatch import HotpatchSpec
from lab.errors import HotpatchError
from lab.hotpatch.doctor.doctor import diagnose
from lab.hotpatch.qemu_build import load_build

# Only the plain build: libcare-cc drops -g, so the libcare build has next to no DWARF. Both are the same
# source, configuration and compiler (GCC's code does not depend on -g): the same functions, sizes, inlining.


def qemu_binary(given: str | None, build_cache: str | None = None) -> str:
    """The QEMU binary to read: a binary, a build directory of the cache, or else the newest cached build."""
    if given:
        path = Path(given)
        if path.is_dir():
            build = load_build(path)
            if build is None:
                raise HotpatchError(f"{given}: not a finished QEMU build (no build.json with an existing binary); "
                                    "give the build's directory under the cache, or a binary")
            return str(build.binary)
        if not path.exists():
            raise HotpatchError(f"--qemu {given}: no such file or build directory")
        return str(path)
    cache = Path(build_cache or HotpatchSpec().build_cache)
    builds = [b for entry in sorted(cache.glob("qemu-*"), key=lambda p: p.stat().st_mtime, reverse=True)
              if (b := load_build(entry)) and b.mode == "plain"]
    if not builds:
        raise HotpatchError(f"no plain QEMU build (one with debug info) in {cache}: give --qemu BINARY_OR_BUILD, or "
                            "build one: .venv/bin/python -m pytest tests/test_hotpatch_doctor_qemu.py makes it")
    return str(builds[0].binary)


def cmd_hotpatch_doctor(args) -> int:
    report = diagnose(args.patch, qemu_binary(args.qemu), target=args.target, pid=args.pid)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 1 if report.ineffective else 3 if report.nothing_checked else 0


def add_doctor_parser(subparsers) -> argparse.ArgumentParser:
    doctor = subparsers.add_parser(
        "doctor", help="check a hot patch against the FAQ's failure kinds before building or loading it; "
                       "exit 1 when one makes it ineffective",
        description="Per changed function: inline, recursive, never returns, initialization only, shorter than "
                    "5 bytes; changes that are not function changes; buildIDs.")
    doctor.add_argument("patch", metavar="PATCH", help="a unified diff to the QEMU source, or a built .kpatch file")
    doctor.add_argument("--qemu", metavar="BINARY_OR_BUILD",
                        help="the QEMU the patch is built against: a binary with debug info or a build directory "
                             "(default: the plain build in hotpatch.build_cache, which has debug info)")
    doctor.add_argument("--target", metavar="BINARY", help="the binary that will be patched, if not --qemu's "
                        "(e.g. /usr/libexec/qemu-kvm): its buildID must match")
    doctor.add_argument("--pid", type=int, metavar="PID", help="a running QEMU: its buildID, and which threads "
                        "are inside a changed function now (eu-stack)")
    doctor.add_argument("--json", action="store_true", help="the report as JSON (for CI)")
    doctor.error = lambda message: doctor.exit(2, f"lab: error: hotpatch doctor: {message} "
                                                  "(`python -m lab hotpatch doctor --help`)\n")
    doctor.set_defaults(func=cmd_hotpatch_doctor)
    return doctor

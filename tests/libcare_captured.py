"""What the libcareplus driver's tests share: libcareplus output captured from real runs on this
kind of machine (Debian 12, libcareplus built from openeuler-mirror/libcareplus, QEMU
1:7.2+dfsg-7+deb12u18 built by lab/hotpatch/qemu_build.py, guests on the embedded lab; addresses
and buildIDs are the ones those runs printed), and stand-ins for the tools where a test needs
only their presence.
"""
from __future__ import annotations

from pathlib import Path

from lab.hotpatch.kpatch import KPATCH_HEADER
from lab.hotpatch.libcareplus import TOOLS

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "suites" / "hotpatch" / "patches"

LIB_BUILDID = "421abcbc77fc5afb05099f4de9bcc2ddcaa369ba"  # the lab build of that QEMU, through libcare-patch-make
DISTRO_BUILDID = "d9541fd67c4ea37f9ca7fca0f5096f32b3b7e7e0"  # Debian's qemu-system-x86 1:7.2+dfsg-7+deb12u18+b3

CAPTURED = REPO / "tests" / "data" / "libcareplus"  # one file per captured text
CAPTURED_APPLY_OK = (CAPTURED / "apply_ok.txt").read_text()
CAPTURED_INFO_TWO = (CAPTURED / "info_two.txt").read_text()
CAPTURED_UNAPPLY_OK = (CAPTURED / "unapply_ok.txt").read_text()
CAPTURED_APPLY_MISMATCH = (CAPTURED / "apply_mismatch.txt").read_text()
CAPTURED_APPLY_UNSAFE = (CAPTURED / "apply_unsafe.txt").read_text()
# `nm -S` of that build: 0000000000647f50 0000000000000001 T object_property_allow_set_link
CAPTURED_BUILD_TOO_SMALL = (CAPTURED / "build_too_small.txt").read_text()
CAPTURED_DUMP = (CAPTURED / "dump.txt").read_text()


def fake_tools(bindir: Path, names=TOOLS) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    for name in names:
        tool = bindir / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)


def kpatch_bytes(patch_id: str, buildid: str) -> bytes:
    head = KPATCH_HEADER.pack(b"KPATCH1", patch_id.encode(), 0, 0, b"", b"", buildid.encode(), b"",
                                      1700000000, 0)
    return head + b"\0" * 256

"""The QEMU binary hot patch guests run on, and how its kpatches are made: the lab's own
libcare build (kpatches labelled with its buildID), or an installed binary named by
lab.yaml `hotpatch.emulator` (kpatches made in the lab's tree with `--buildid` of it).
The latter is refused unless its code is the rebuilt original's, since a --buildid
kpatch would otherwise jump to the wrong addresses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from lab.errors import HotpatchError
from lab.hotpatch.qemu_build import QemuBuild, pkgversion
from lab.util.elf import build_id, text_digest


@dataclass(frozen=True)
class PatchTarget:
    """The QEMU binary guests run on, and how its kpatches are made."""
    emulator: str
    buildid: str
    build: QemuBuild  # the build the kpatches are made in
    installed: bool  # True: lab.yaml hotpatch.emulator, kpatches made with --buildid of it

    @property
    def package(self) -> str:
        """QMP query-version's `package` of the unpatched binary."""
        return pkgversion(self.build.source)

    @property
    def kpatch_buildid(self) -> str | None:
        """The --buildid kpatches are labelled with; None: the build's own."""
        return self.buildid if self.installed else None


def patch_target(build: QemuBuild, emulator: str | None = None) -> PatchTarget:
    """The lab's libcare `build`, or the installed `emulator` when it has the same code (HotpatchError if not)."""
    if not emulator:
        return PatchTarget(build.emulator, build.buildid, build, installed=False)
    if not os.path.exists(emulator):
        raise HotpatchError(f"hotpatch.emulator {emulator}: no such file; fix lab.yaml or set it to null")
    if text_digest(emulator, error=HotpatchError) != text_digest(build.binary, error=HotpatchError):
        raise HotpatchError(f"hotpatch.emulator {emulator} was not built in an environment matching this host's "
                            f"source build (.text differs from {build.binary}): a --buildid kpatch would jump to "
                            "wrong addresses; set hotpatch.emulator to null to run guests on the lab's build")
    return PatchTarget(emulator, build_id(emulator, error=HotpatchError), build, installed=True)

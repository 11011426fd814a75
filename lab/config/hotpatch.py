"""Hot patch settings: lab.yaml's `hotpatch:` section, and the hot patch suite's limits file.

The limits live apart from thresholds.yaml (which is the migration suites'): the suite keeps
its file next to itself and loads it with `load_hotpatch_limits`.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lab.config.common import AbsPath, PositiveNumber
from lab.config.validation import Model, load_file, validated


class HotpatchSpec(Model):
    """lab.yaml `hotpatch:`: where libcareplus and the patchable QEMU come from."""

    libcareplus_prefix: AbsPath | None = None  # where libcareplus is installed, if not on PATH
    build_cache: AbsPath = "/var/cache/kvm-acceptance-lab/qemu-hotpatch"  # QEMU source builds, by version + patch
    emulator: AbsPath | None = None  # a QEMU binary to patch instead of the cache's own build


class HotpatchLimits(Model):
    """The hot patch suite's limits, in milliseconds; every one is required."""

    apply_stall_ms: PositiveNumber = Field(description="largest guest heartbeat gap around one apply, ms")
    apply_frozen_ms: PositiveNumber = Field(description="libcare-ctl's frozen_time for one apply, ms")
    unapply_stall_ms: PositiveNumber = Field(description="largest guest heartbeat gap around one unapply, ms")


def parse_hotpatch_limits(data: object) -> HotpatchLimits:
    return validated(HotpatchLimits, data, root="hot patch thresholds")


def load_hotpatch_limits(path: Path) -> HotpatchLimits:
    """The limits file at `path`; errors are one line: the path, the key, what is wrong."""
    return load_file(Path(path), "hot patch thresholds", "", parse_hotpatch_limits)

"""Fixtures for the hot patch suite: libcareplus, the lab's patchable QEMU, kpatches built once per session."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lab.errors import ConfigError, LabError
from lab.hotpatch.driver import elf_build_id, find_libcareplus, text_digest

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"
THRESHOLDS_FILE = HERE / "hotpatch-thresholds.yaml"
THRESHOLD_KEYS = ("apply_stall_ms", "apply_frozen_ms", "unapply_stall_ms")

# What each kpatch is made of: id (at most 7 characters) -> patch files, applied in order.
PATCH_SETS = {
    "0001": ["0001-query-version-package.patch"],
    "0002": ["0001-query-version-package.patch", "0002-query-version-package-level2.patch"],
    "stack": ["unsafe-qemu_main_loop-on-stack.patch"],
    "tiny": ["tiny-object_property_allow_set_link.patch"],
}
PACKAGE_SUFFIX = {"0001": " +hotpatch-0001", "0002": " +hotpatch-0001 +hotpatch-0002"}


def load_hotpatch_thresholds(path: Path = THRESHOLDS_FILE) -> dict[str, float]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read hot patch thresholds: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {', '.join(THRESHOLD_KEYS)}")
    for key in data:
        if key not in THRESHOLD_KEYS:
            raise ConfigError(f"{path}: {key}: unknown key (allowed: {', '.join(THRESHOLD_KEYS)})")
    out = {}
    for key in THRESHOLD_KEYS:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{path}: {key}: {value!r} is not a positive number (milliseconds)")
        out[key] = float(value)
    return out


def progress_printer(report_dir: Path):
    """Progress of long builds: to the terminal (past pytest's capture) and to the run's report folder."""
    log = report_dir / "hotpatch-build-progress.log"
    started = time.monotonic()

    def say(msg: str) -> None:
        line = f"[hotpatch {time.monotonic() - started:6.0f}s] {msg}"
        print(line, file=sys.__stderr__, flush=True)
        report_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(line + "\n")
    return say


@pytest.fixture(scope="session")
def hotpatch_thresholds():
    try:
        return load_hotpatch_thresholds()
    except LabError as exc:
        pytest.exit(f"kvm-lab: {exc}", returncode=4)


@pytest.fixture(scope="session")
def build_progress(report_dir):
    return progress_printer(report_dir)


@pytest.fixture(scope="session")
def libcare(lab_config):
    """libcareplus from hotpatch.libcareplus_prefix or PATH; the test skips (saying how to get it) without it."""
    try:
        return find_libcareplus(lab_config.hotpatch.libcareplus_prefix)
    except LabError as exc:
        pytest.skip(str(exc))


@dataclass(frozen=True)
class Target:
    """The QEMU binary guests of this suite run on, and how its kpatches are made."""
    emulator: str
    buildid: str
    build: object  # lab.qemu_build.QemuBuild the kpatches are made in
    installed: bool  # True: lab.yaml hotpatch.emulator, kpatches made with --buildid of it

    @property
    def package(self) -> str:
        from lab.hotpatch.qemu_build import pkgversion

        return pkgversion(self.build.source)


@pytest.fixture(scope="session")
def target(lab_config, libcare, build_progress) -> Target:
    from lab.hotpatch.qemu_build import ensure_qemu_build

    try:
        build = ensure_qemu_build(lab_config.hotpatch.build_cache, mode="libcare", libcare=libcare,
                                  progress=build_progress)
    except LabError as exc:
        pytest.fail(f"the lab's patchable QEMU could not be built: {exc}", pytrace=False)
    emulator = lab_config.hotpatch.emulator
    if not emulator:
        return Target(build.emulator, build.buildid, build, installed=False)
    # An installed binary is patchable with --buildid only when its code is the rebuilt original's.
    if not os.path.exists(emulator):
        pytest.fail(f"hotpatch.emulator {emulator}: no such file; fix lab.yaml or set it to null", pytrace=False)
    if text_digest(emulator) != text_digest(build.binary):
        pytest.fail(f"hotpatch.emulator {emulator} was not built in an environment matching this host's source "
                    f"build (.text differs from {build.binary}): a --buildid kpatch would jump to wrong addresses; "
                    "set hotpatch.emulator to null to run guests on the lab's build", pytrace=False)
    return Target(emulator, elf_build_id(emulator), build, installed=True)


@pytest.fixture(scope="session")
def kpatch(target, libcare, build_progress):
    """kpatch(patch_id) -> BuildResult, built once (and cached on disk by source version + patch set)."""
    from lab.hotpatch.qemu_build import ensure_kpatch

    def make(patch_id: str):
        files = [PATCHES / name for name in PATCH_SETS[patch_id]]
        return ensure_kpatch(target.build, libcare, files, patch_id,
                             target_buildid=target.buildid if target.installed else None, progress=build_progress)
    return make

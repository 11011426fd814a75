"""Fixtures for the hot patch suite: libcareplus, the lab's patchable QEMU, kpatches built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from lab.config.hotpatch import load_hotpatch_limits
from lab.errors import LabError
from lab.hotpatch.kpatch_cache import ensure_kpatch
from lab.hotpatch.libcareplus import find_libcareplus
from lab.hotpatch.progress import progress_printer
from lab.hotpatch.qemu_build import ensure_qemu_build
from lab.hotpatch.target import PatchTarget, patch_target

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"
THRESHOLDS_FILE = HERE / "hotpatch-thresholds.yaml"

# What each kpatch is made of: id (at most 7 characters) -> patch files, applied in order.
PATCH_SETS = {
    "0001": ["0001-query-version-package.patch"],
    "0002": ["0001-query-version-package.patch", "0002-query-version-package-level2.patch"],
    "stack": ["unsafe-qemu_main_loop-on-stack.patch"],
    "tiny": ["tiny-object_property_allow_set_link.patch"],
}
PACKAGE_SUFFIX = {"0001": " +hotpatch-0001", "0002": " +hotpatch-0001 +hotpatch-0002"}


def load_hotpatch_thresholds(path: Path = THRESHOLDS_FILE) -> dict[str, float]:
    """The suite's limits (validated by lab.config.hotpatch) as a plain mapping: the test indexes it and records it."""
    return load_hotpatch_limits(path).model_dump()


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


@pytest.fixture(scope="session")
def target(lab_config, libcare, build_progress) -> PatchTarget:
    try:
        build = ensure_qemu_build(lab_config.hotpatch.build_cache, mode="libcare", libcare=libcare,
                                  progress=build_progress)
    except LabError as exc:
        pytest.fail(f"the lab's patchable QEMU could not be built: {exc}", pytrace=False)
    try:
        return patch_target(build, lab_config.hotpatch.emulator)
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kpatch(target, libcare, build_progress):
    """kpatch(patch_id) -> BuildResult, built once (and cached on disk by source version + patch set)."""
    def make(patch_id: str):
        files = [PATCHES / name for name in PATCH_SETS[patch_id]]
        return ensure_kpatch(target.build, libcare, files, patch_id, target_buildid=target.kpatch_buildid,
                             progress=build_progress)
    return make

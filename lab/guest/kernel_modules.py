"""The guest kernel's modules the initramfs needs (virtio), in insmod order, decompressed.

Debian's kernel .deb ships no modules.dep (its postinst runs depmod), so the
dependencies come from each module's `.modinfo` ELF section (pyelftools).
"""
from __future__ import annotations

import gzip
import io
import lzma
import shutil
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from lab.errors import ImageError
from lab.util.process import run

KERNEL_ENV = "LAB_GUEST_KERNEL_PKG"  # names another kernel package when this one will not do


def mod_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def module_files(moddir: Path) -> dict[str, Path]:
    return {mod_name(p): p for p in moddir.rglob("*.ko*")}


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def module_order(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Wanted modules and their dependencies, each after everything it needs (insmod order)."""
    files = module_files(moddir)
    builtin = {mod_name(Path(line)) for line in _lines(moddir / "modules.builtin")}
    deps_of = deps_from_modules_dep(moddir) if (moddir / "modules.dep").is_file() else None
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order or name in builtin:
            return
        if name in chain:
            raise ImageError(f"module dependency loop {' -> '.join(chain + (name,))}: set {KERNEL_ENV} to another kernel")
        if name not in files:
            raise ImageError(f"kernel module {name} not in the kernel package: set {KERNEL_ENV} to a kernel with virtio")
        needs = deps_of.get(name, []) if deps_of is not None else modinfo_depends(ko_bytes(files[name]))
        for dep in needs:
            visit(dep, chain + (name,))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def deps_from_modules_dep(moddir: Path) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in _lines(moddir / "modules.dep"):
        mod, _, rest = line.partition(":")
        deps[mod_name(Path(mod))] = [mod_name(Path(d)) for d in rest.split()]
    return deps


def modinfo_depends(ko: bytes) -> list[str]:
    """depends= from the module's .modinfo section."""
    try:
        section = ELFFile(io.BytesIO(ko)).get_section_by_name(".modinfo")
    except ELFError:
        raise ImageError(f"a kernel module is not an ELF file: set another guest kernel with {KERNEL_ENV}") from None
    if section is None:
        return []
    for entry in section.data().split(b"\0"):
        if entry.startswith(b"depends="):
            return [d for d in entry[8:].decode().split(",") if d]
    return []


def ko_bytes(path: Path) -> bytes:
    """Module content, decompressed: busybox insmod cannot load .ko.xz/.ko.zst."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        if not shutil.which("zstd"):
            raise ImageError(f"zstd not found, needed for {path.name}: apt-get install zstd")
        return run(["zstd", "-dc", path], text=False, error=ImageError, what=f"zstd -d {path.name}").stdout
    return data

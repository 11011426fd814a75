"""A QEMU the lab can hot patch: built from the distro's source package of the installed version.

Debian: `apt-get source qemu=<source version of the installed qemu-system-x86>` (a
deb-src entry is added in its own file when there is none), configured for
x86_64-softmmu only, with the distro's firmware directories baked in as the
firmware search path (what Debian's own packaging does), so libvirt can run the
binary as is: no wrapper, no `-L`.

Two ways to build the same tree:

- plain: configure + make (no libcareplus needed; proves the source build works);
- libcare: through libcare-patch-make's original stage (no patch), so the binary
  and the per-file original assembly are what later kpatch builds are made
  against. Guests for hot patch tests run on that binary.

Builds are cached under HotpatchSpec.build_cache by source version and mode, one
build at a time (file lock), and count only once their `build.json` has been
written (atomically, last): an interrupted build is found incomplete and redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from lab.errors import HotpatchError
from lab.util.locks import file_lock

Progress = Callable[[str], None]

BINARY_PACKAGE = "qemu-system-x86"
DEB_SRC_FILE = Path("/etc/apt/sources.list.d/kvm-lab-deb-src.sources")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
# Where Debian's qemu-system-data, seabios and ipxe-qemu put firmware; Debian's
# own build passes the same list as --firmwarepath.
FIRMWARE_PATH = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
BUILD_DEPS = ("build-essential", "ninja-build", "meson", "libglib2.0-dev", "libpixman-1-dev", "libfdt-dev",
              "flex", "bison", "python3-venv", "dpkg-dev", "pkg-config")
CONFIGURE_ARGS = ("--target-list=x86_64-softmmu", "--without-default-features", "--enable-kvm", "--enable-tcg",
                  "--enable-fdt=system", "--disable-docs", "--disable-install-blobs", "--prefix=/usr",
                  "--firmwarepath=" + ":".join(FIRMWARE_PATH))
BINARY = "qemu-system-x86_64"
MODES = ("plain", "libcare")


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class QemuSource:
    package: str  # source package name (qemu)
    version: str  # source version, epoch included (1:7.2+dfsg-7+deb12u18)
    installed: str  # the installed binary package's version (may carry a binNMU suffix, +b3)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]", "_", self.version.replace(":", "_"))


@dataclass(frozen=True)
class QemuBuild:
    """A finished build in the cache."""
    dir: Path  # the cache entry
    source: QemuSource
    mode: str  # plain | libcare
    srcdir: Path  # unpacked source tree
    builddir: Path  # its build/ directory (libcare-patch-make runs here)
    binary: Path  # the emulator guests run on (a stable copy, never rewritten)
    buildid: str
    minutes: float

    @property
    def emulator(self) -> str:
        return str(self.binary)


# -- the installed QEMU and its source ----------------------------------------

def installed_source(package: str = BINARY_PACKAGE) -> QemuSource:
    """Source package and version the installed QEMU binary package was built from (dpkg)."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${source:Package}\t${source:Version}\t${Version}", package],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise HotpatchError("dpkg-query not found: building QEMU from its source package is implemented for "
                            "Debian (openEuler: rpmbuild the qemu SRPM, then set hotpatch.emulator)") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HotpatchError(f"{package} is not installed: apt-get install {package} "
                            "(its source version is what gets built)")
    src, src_version, version = proc.stdout.strip().split("\t")
    return QemuSource(src or "qemu", src_version or version, version)


def has_deb_src(sources_dir: Path = APT_SOURCES_DIR, sources_list: Path = Path("/etc/apt/sources.list")) -> bool:
    """True when apt has any deb-src entry (one-line or deb822 format)."""
    texts = []
    if sources_list.exists():
        texts.append(sources_list.read_text(errors="replace"))
    for path in sorted(sources_dir.glob("*.list")) + sorted(sources_dir.glob("*.sources")):
        texts.append(path.read_text(errors="replace"))
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("deb-src "):
                return True
            if line.lower().startswith("types:") and "deb-src" in line.split(":", 1)[1].split():
                return True
    return False


def deb_src_stanzas(debian_sources: str) -> str:
    """`Types: deb-src` stanzas mirroring every `Types: deb` stanza's URIs/Suites/Components/Signed-By (deb822)."""
    out = []
    for block in re.split(r"\n\s*\n", debian_sources.strip()):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        lines = ["Types: deb-src"]
        for key, name in (("uris", "URIs"), ("suites", "Suites"), ("components", "Components"),
                          ("signed-by", "Signed-By")):
            if key in fields:
                lines.append(f"{name}: {fields[key]}")
        out.append("\n".join(lines))
    return "\n\n".join(out) + ("\n" if out else "")


def ensure_deb_src(progress: Progress = _quiet, sources_dir: Path = APT_SOURCES_DIR) -> None:
    """Give apt a deb-src entry (in a separate file, the distro's files untouched) and refresh its lists."""
    if has_deb_src(sources_dir):
        return
    debian = sources_dir / "debian.sources"
    if not debian.exists():
        raise HotpatchError(f"no deb-src entry and no {debian} to mirror: add a deb-src line for your mirror, "
                            "then run again")
    stanzas = deb_src_stanzas(debian.read_text())
    if not stanzas:
        raise HotpatchError(f"{debian}: no enabled `Types: deb` stanza to mirror as deb-src; add one by hand")
    progress(f"apt has no deb-src entry: writing {DEB_SRC_FILE} (mirrors {debian}) and running apt-get update")
    tmp = DEB_SRC_FILE.with_suffix(".tmp")
    tmp.write_text("# Added by kvm-acceptance (lab/qemu_build.py) so `apt-get source qemu` works; safe to delete.\n"
                   + stanzas)
    os.replace(tmp, DEB_SRC_FILE)
    _apt(["apt-get", "update", "-qq"], "apt-get update", timeout=600)


def _apt(argv: list[str], what: str, timeout: float, cwd: Path | None = None) -> str:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HotpatchError(f"{what}: timed out after {timeout:.0f} s; check the network to the mirror") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise HotpatchError(f"{what} failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}")
    return proc.stdout


def missing_packages(packages: Sequence[str]) -> list[str]:
    missing = []
    for pkg in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def ensure_build_deps(progress: Progress = _quiet) -> None:
    missing = missing_packages(BUILD_DEPS)
    if missing:
        progress(f"installing QEMU build dependencies: {' '.join(missing)}")
        _apt(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
             "apt-get install " + " ".join(missing), timeout=1200)


def fetch_source(source: QemuSource, dest: Path, progress: Progress = _quiet) -> Path:
    """`apt-get source --download-only`, then dpkg-source -x into dest/src; returns the tree."""
    ensure_deb_src(progress)
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"fetching source package {source.package}={source.version} "
             f"(installed {BINARY_PACKAGE} {source.installed})")
    _apt(["apt-get", "source", "--download-only", "-qq", f"{source.package}={source.version}"],
         f"apt-get source {source.package}={source.version}", timeout=1200, cwd=dest)
    dscs = sorted(dest.glob(f"{source.package}_*.dsc"))
    if not dscs:
        raise HotpatchError(f"apt-get source {source.package}={source.version} left no .dsc in {dest}")
    tree = dest / "src"
    if tree.exists():
        shutil.rmtree(tree)
    progress("unpacking the source package (upstream tarball + Debian patches)")
    _apt(["dpkg-source", "--no-check", "-x", str(dscs[0]), str(tree)], "dpkg-source -x", timeout=600)
    return tree


def disable_edk2_unpacking(srcdir: Path) -> bool:
    """The dfsg tarball has no edk2 blobs; stop meson from unpacking them for x86_64. True if changed."""
    meson = srcdir / "meson.build"
    text = meson.read_text()
    new = re.sub(r"unpack_edk2_blobs = bzip2\.found\(\)",
                 "unpack_edk2_blobs = false  # kvm-acceptance: dfsg has no edk2 blobs", text)
    if new == text:
        return False
    meson.write_text(new)
    return True


# -- building -----------------------------------------------------------------

def _run_logged(argv: Sequence[str], log, cwd: Path, env: dict | None = None, timeout: float = 7200) -> int:
    log.write(f"\n$ {' '.join(argv)}  (in {cwd})\n")
    log.flush()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    return proc.returncode


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def pkgversion(source: QemuSource) -> str:
    """What QMP query-version reports as `package` for the lab's build (before any hot patch)."""
    return f"kvm-lab {source.version}"


def configure(srcdir: Path, log, source: QemuSource) -> Path:
    builddir = srcdir / "build"
    builddir.mkdir(exist_ok=True)
    # cc, not an absolute compiler path: libcare-patch-make swaps the `cc` symlink to put libcare-cc in.
    env = dict(os.environ, CC="cc", TERM="dumb")
    rc = _run_logged(["../configure", *CONFIGURE_ARGS, f"--with-pkgversion={pkgversion(source)}"], log, builddir,
                     env, timeout=1200)
    if rc != 0:
        raise HotpatchError(f"QEMU configure failed (exit {rc}): {_tail(Path(log.name))}; full log {log.name}")
    return builddir


LPMAKEFILE = """\
# Written by kvm-acceptance (lab/qemu_build.py). libcare-patch-make uses ./lpmakefile when it
# exists: build and install only the emulator (QEMU's `all` also builds tools and unit tests).
all:
\t$(MAKE) -f Makefile qemu-system-x86_64
install: all
\tinstall -D -m 0755 qemu-system-x86_64 $(DESTDIR)/usr/bin/qemu-system-x86_64
clean:
\t$(MAKE) -f Makefile clean
.PHONY: all install clean
"""


def write_lpmakefile(builddir: Path) -> Path:
    path = builddir / "lpmakefile"
    path.write_text(LPMAKEFILE)
    return path


def make_plain(builddir: Path, log, jobs: int, progress: Progress = _quiet) -> Path:
    from lab.hotpatch.driver import CC_SWAP_LOCK

    # The tree compiles with `cc`: while a libcare-patch-make run has swapped it for libcare-cc, wait.
    with file_lock(CC_SWAP_LOCK, "libcare-patch-make run (it swaps the machine's cc)", progress):
        rc = _run_logged(["make", f"-j{jobs}", BINARY], log, builddir, dict(os.environ, TERM="dumb"))
    binary = builddir / BINARY
    if rc != 0 or not binary.exists():
        raise HotpatchError(f"QEMU build failed (exit {rc}): {_tail(Path(log.name))}; full log {log.name}")
    return binary


def config_hash() -> str:
    """Changes whenever the way the tree is configured or tweaked changes: such builds are not reused."""
    recipe = "\n".join([*CONFIGURE_ARGS, "pkgversion=kvm-lab", "edk2-unpacking=off"])
    return hashlib.sha256(recipe.encode()).hexdigest()[:8]


def install_emulator(entry: Path, built: Path) -> Path:
    """Copy the emulator to <entry>/root/usr/bin, a stable path later builds in the tree never rewrite.

    QEMU finds firmware relative to its own location (a relocatable install: /usr/bin/../share/seabios),
    so <entry>/root/usr/share/seabios etc. are links to the distro's firmware directories.
    """
    root = entry / "root"
    binary = root / "usr" / "bin" / BINARY
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(BINARY + ".tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, binary)
    for firmware in FIRMWARE_PATH:
        link = root / firmware.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(firmware)
    return binary


def cache_dir(build_cache: str | os.PathLike, source: QemuSource, mode: str) -> Path:
    return Path(build_cache) / f"qemu-{source.slug}-{mode}-{config_hash()}"


def load_build(entry: Path) -> QemuBuild | None:
    """A complete cache entry, or None (missing, interrupted, or its binary gone)."""
    meta = entry / "build.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    build = QemuBuild(dir=entry, source=QemuSource(**data["source"]), mode=data["mode"],
                      srcdir=Path(data["srcdir"]), builddir=Path(data["builddir"]), binary=Path(data["binary"]),
                      buildid=data["buildid"], minutes=data["minutes"])
    return build if build.binary.exists() else None


def _write_meta(build: QemuBuild) -> None:
    data = asdict(build)
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
    tmp = build.dir / "build.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, build.dir / "build.json")


def ensure_qemu_build(build_cache: str | os.PathLike, *, mode: str = "libcare", libcare=None,
                      progress: Progress = _quiet, jobs: int | None = None,
                      source: QemuSource | None = None) -> QemuBuild:
    """The cached build for the installed QEMU's source version in `mode`, building it when needed.

    mode "libcare" needs `libcare` (a lab.hotpatch.LibcarePlus) and builds through
    libcare-patch-make's original stage; mode "plain" needs nothing but apt.
    """
    from lab.hotpatch.driver import elf_build_id

    if mode not in MODES:
        raise HotpatchError(f"QEMU build mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "libcare" and libcare is None:
        raise HotpatchError("a libcare build of QEMU needs libcareplus (lab.hotpatch.find_libcareplus())")
    source = source or installed_source()
    entry = cache_dir(build_cache, source, mode)
    done = load_build(entry)
    if done:
        return done
    jobs = jobs or os.cpu_count() or 2
    with file_lock(Path(build_cache) / f".{entry.name}.lock", "QEMU build of this version", progress):
        done = load_build(entry)  # somebody else finished it while we waited
        if done:
            return done
        started = time.monotonic()
        if entry.exists():
            progress(f"removing an incomplete build in {entry}")
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        log_path = entry / "build.log"
        ensure_build_deps(progress)
        srcdir = fetch_source(source, entry, progress)
        disable_edk2_unpacking(srcdir)
        with open(log_path, "a") as log:
            progress(f"configuring QEMU {source.version} for x86_64-softmmu (log {log_path})")
            builddir = configure(srcdir, log, source)
            if mode == "plain":
                progress(f"building QEMU with make -j{jobs} (about 4 minutes on 2 cores)")
                built = make_plain(builddir, log, jobs, progress)
            else:
                progress(f"building QEMU through libcare-patch-make's original stage, -j{jobs} "
                         "(about 5 minutes on 2 cores)")
                write_lpmakefile(builddir)
                built = libcare.build_original(builddir, log_path=log_path, jobs=jobs, progress=progress)
        binary = install_emulator(entry, built)
        build = QemuBuild(dir=entry, source=source, mode=mode, srcdir=srcdir, builddir=builddir, binary=binary,
                          buildid=elf_build_id(binary), minutes=round((time.monotonic() - started) / 60, 2))
        _write_meta(build)
        progress(f"QEMU {source.version} ({mode}) built in {build.minutes:.1f} min: {binary} buildID {build.buildid}")
        return build


def patch_set_hash(patch_files: Sequence[str | os.PathLike]) -> str:
    """Hash of the patch files' names and contents, in order: the cache key of a kpatch build."""
    digest = hashlib.sha256()
    for path in patch_files:
        p = Path(path)
        digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# -- kpatches for a build, cached by patch set ---------------------------------

def ensure_kpatch(build: QemuBuild, libcare, patch_files: Sequence[str | os.PathLike], patch_id: str, *,
                  target_buildid: str | None = None, progress: Progress = _quiet, jobs: int | None = None):
    """The kpatch for `patch_files` (applied in order) against `build`, made once and cached.

    `target_buildid` labels the kpatch for another binary (libcare-patch-make --buildid).
    A refused build is cached too (its log); asking again re-diagnoses the log and raises
    lab.hotpatch.HotpatchFailed just like the first time, without another 5-minute build.
    """
    from lab.hotpatch.driver import BuildResult, HotpatchFailed, Symbols, diagnose_build, read_kpatch_header

    if build.mode != "libcare":
        raise HotpatchError(f"{build.dir}: a {build.mode} build cannot make kpatches; use a libcare build")
    key = f"{patch_id}-{patch_set_hash(patch_files)}" + (f"-for-{target_buildid[:12]}" if target_buildid else "")
    entry = build.dir / "kpatches" / key
    result_file = entry / "result.json"
    symbols = Symbols(build.binary)

    def from_cache():
        try:
            data = json.loads(result_file.read_text())
        except (OSError, ValueError):
            return None
        if data["ok"]:
            paths = tuple(data["kpatch_paths"])
            if all(Path(p).exists() for p in paths):
                return BuildResult(paths, data["buildid"], data["log_path"], patch_id, data.get("original_binary", ""),
                                   data.get("original_buildid", ""), data.get("seconds", 0.0))
            return None
        raise HotpatchFailed(diagnose_build(Path(data["log_path"]).read_text(errors="replace"), symbols.name_at,
                                            symbols.size_of))

    cached = from_cache()
    if cached:
        return cached
    with file_lock(build.dir / ".kpatch.lock", "kpatch build in this QEMU tree", progress):
        cached = from_cache()
        if cached:
            return cached
        if entry.exists():
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        log_path = entry / "libcare-patch-make.log"
        names = ", ".join(Path(p).name for p in patch_files)
        progress(f"building kpatch {patch_id} from {names} with libcare-patch-make (original + patched stages; "
                 "a few minutes)")
        started = time.monotonic()
        try:
            result = libcare.build(build.srcdir, patch_files, build.builddir, target_buildid, patch_id=patch_id,
                                   jobs=jobs or os.cpu_count() or 2, log_path=log_path,
                                   expect_buildid=build.buildid, progress=progress)
        except HotpatchFailed:
            _write_json(result_file, {"ok": False, "log_path": str(log_path)})
            raise
        kept = []
        for path in result.kpatch_paths:
            dest = entry / Path(path).name
            shutil.copy2(path, dest)
            kept.append(str(dest))
        head = read_kpatch_header(kept[0])
        seconds = round(time.monotonic() - started, 1)
        _write_json(result_file, {"ok": True, "kpatch_paths": kept, "buildid": head.buildid,
                                  "log_path": str(log_path), "original_binary": result.original_binary,
                                  "original_buildid": result.original_buildid, "seconds": seconds,
                                  "patches": [str(p) for p in patch_files]})
        progress(f"kpatch {patch_id} ready in {seconds / 60:.1f} min: {kept[0]}")
        return BuildResult(tuple(kept), head.buildid, str(log_path), patch_id, result.original_binary,
                           result.original_buildid, seconds)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)

"""The libcareplus driver's build and load steps, tested without libcareplus, a lab or a network:
the host's cc kept safe while libcare-patch-make swaps it, a build judged by its output files, a
patch applied on a lab host where its QEMU runs, and the QEMU source build's deb-src handling.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab.errors import HotpatchError
from lab.hotpatch.cc_guard import cc_guard
from lab.hotpatch.diagnosis import BuildIdMismatch, HotpatchFailed
from lab.hotpatch.kpatch_cache import patch_set_hash
from lab.hotpatch.libcareplus import LibcarePlus
from lab.hotpatch.process_site import HostSite, load_base
from lab.hotpatch.qemu_source import deb_src_stanzas, has_deb_src
from lab.hotpatch.source_tree import patched_files, restore_lpmakeorig
from lab.util.elf import build_id
from lab.util.process import run
from tests.libcare_captured import CAPTURED_APPLY_MISMATCH, LIB_BUILDID, PATCHES, REPO, fake_tools, kpatch_bytes


# -- protecting the host's cc -------------------------------------------------

def _cc_chain(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/usr/bin/cc -> tmp/etc/alternatives/cc -> /usr/bin/gcc, like Debian's."""
    usr_cc, alt_cc = tmp_path / "usr" / "bin" / "cc", tmp_path / "etc" / "alternatives" / "cc"
    usr_cc.parent.mkdir(parents=True)
    alt_cc.parent.mkdir(parents=True)
    alt_cc.symlink_to("/usr/bin/gcc")
    usr_cc.symlink_to(alt_cc)
    return usr_cc, alt_cc


def _swap_like_libcare_patch_make(link: Path, to: str) -> None:
    # what libcare-patch-make's replace_cc_symbolink does: unlink, then ln -s libcare-cc
    run(["bash", "-c", f'unlink "{link}"; ln -s "{to}" "{link}"'])


def test_cc_guard_restores_the_link_after_a_normal_run(tmp_path):
    usr_cc, alt_cc = _cc_chain(tmp_path)
    with cc_guard([usr_cc, alt_cc]):
        _swap_like_libcare_patch_make(usr_cc, "/opt/libcare/bin/libcare-cc")
        assert os.readlink(usr_cc) == "/opt/libcare/bin/libcare-cc"
    assert os.readlink(usr_cc) == str(alt_cc) and os.readlink(alt_cc) == "/usr/bin/gcc"


def test_cc_guard_restores_the_link_on_keyboard_interrupt(tmp_path):
    usr_cc, alt_cc = _cc_chain(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with cc_guard([usr_cc, alt_cc]):
            _swap_like_libcare_patch_make(usr_cc, "/opt/libcare/bin/libcare-cc")
            # libcare-patch-make's own SIGINT trap "recovers" to the resolved compiler, not the original link
            _swap_like_libcare_patch_make(alt_cc, "/opt/elsewhere/gcc")
            raise KeyboardInterrupt
    assert os.readlink(usr_cc) == str(alt_cc) and os.readlink(alt_cc) == "/usr/bin/gcc"


def test_cc_guard_restores_the_link_when_the_process_gets_sigterm(tmp_path):
    usr_cc, alt_cc = _cc_chain(tmp_path)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from lab.hotpatch.cc_guard import cc_guard
        from lab.util.process import run
        with cc_guard([{str(usr_cc)!r}, {str(alt_cc)!r}]):
            run(["bash", "-c", 'unlink "{usr_cc}"; ln -s /opt/libcare/bin/libcare-cc "{usr_cc}"'], check=False)
            print("swapped", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "swapped"
    assert os.readlink(usr_cc) == "/opt/libcare/bin/libcare-cc"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.returncode != 0
    assert os.readlink(usr_cc) == str(alt_cc)


def test_cc_guard_puts_back_a_regular_file_and_removes_what_was_not_there(tmp_path):
    real, absent = tmp_path / "cc", tmp_path / "c89"
    real.write_bytes(b"\x7fELF-fake-compiler")
    with cc_guard([real, absent]):
        real.unlink()
        real.symlink_to("/opt/libcare/bin/libcare-cc")
        absent.symlink_to("/opt/libcare/bin/libcare-cc")
    assert not real.is_symlink() and real.read_bytes() == b"\x7fELF-fake-compiler"
    assert not absent.exists() and not absent.is_symlink()
    assert not list(tmp_path.glob(".*backup"))


FAKE_PATCH_MAKE = """#!/bin/sh
# A stand-in for libcare-patch-make (not libcareplus code): swaps the injected cc link as the
# real one does, prints the lines the real one prints on a too-small function, exits 0 with no kpatch.
ln -sf "$KVMLAB_FAKE_LIBCARE_CC" "$KVMLAB_FAKE_CC"
echo "BUILDING ORIGINAL CODE"
echo "applying $7..."
echo "BUILDING PATCHED CODE"
echo "MAKING PATCHES"
echo "kpatch_strip.c(95): too small function to patch at 0x4a4690" >&2
echo "Failed to do stripped."
printf '%s\\n' "$@" > "$KVMLAB_FAKE_ARGS"
printf '%s' "$TERM" > "$KVMLAB_FAKE_TERM"
exit 0
"""


def test_a_build_through_the_compiler_cache_waits_while_libcare_has_swapped_cc(tmp_path, monkeypatch):
    """Stack and plain QEMU builds compile with ccache's `cc`, which calls the machine's `cc`: while a
    libcare-patch-make run has swapped that for libcare-cc (holding CC_SWAP_LOCK), they wait."""
    import fcntl
    import threading
    from lab.stacks import compiler_cache
    monkeypatch.setattr(compiler_cache, "CC_SWAP_LOCK", tmp_path / "cc-swap.lock")
    monkeypatch.setattr(compiler_cache, "CCACHE_DIR", tmp_path / "ccache")
    held = os.open(tmp_path / "cc-swap.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # what libcare-patch-make's run holds
    said, entered = [], threading.Event()

    def build():
        with compiler_cache.compiling(said.append):
            entered.set()

    builder = threading.Thread(target=build)
    builder.start()
    try:
        assert not entered.wait(0.5), "a cached build compiled while cc was swapped for libcare-cc"
        assert any("libcare-patch-make run" in line for line in said), said
    finally:
        os.close(held)
    assert entered.wait(5) and builder.join(5) is None


def test_build_judges_by_output_files_restores_cc_and_passes_absolute_patch_paths(tmp_path, monkeypatch):
    bindir = tmp_path / "libcare"
    fake_tools(bindir)
    (bindir / "libcare-patch-make").write_text(FAKE_PATCH_MAKE)
    usr_cc, alt_cc = _cc_chain(tmp_path)
    src = tmp_path / "qemu"
    (src / "build").mkdir(parents=True)
    patch = tmp_path / "p" / "0001.patch"
    patch.parent.mkdir()
    patch.write_text("--- a/x.c\n+++ b/x.c\n")
    (src / "x.c").write_text("int x;\n")
    monkeypatch.setenv("KVMLAB_FAKE_CC", str(usr_cc))
    monkeypatch.setenv("KVMLAB_FAKE_LIBCARE_CC", str(bindir / "libcare-cc"))
    monkeypatch.setenv("KVMLAB_FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("KVMLAB_FAKE_TERM", str(tmp_path / "term"))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.chdir(tmp_path / "p")
    driver = LibcarePlus(bindir, cc_links=(usr_cc, alt_cc), cc_lock=tmp_path / "cc.lock")
    with pytest.raises(HotpatchFailed) as caught:
        driver.build(src, ["0001.patch"], src / "build", patch_id="0001", jobs=1)
    assert caught.value.diagnosis.kind == "function-too-small"
    assert os.readlink(usr_cc) == str(alt_cc), "cc was left pointing at libcare-cc"
    args = (tmp_path / "args").read_text().split()
    assert str(patch) in args and "0001.patch" not in args, args
    assert args[:6] == ["-s", "..", "-i", "0001", "-j", "1"]
    assert (tmp_path / "term").read_text() == "dumb"
    with pytest.raises(HotpatchError, match="patch id"):
        driver.build(src, [patch], src / "build", patch_id="too-long-id")


class _HostHere:
    """A lab host whose shell is this machine's (as the embedded lab's hosts share its filesystem and PIDs)."""
    name, ssh_target = "here", "root@127.0.0.1"

    def __init__(self):
        self.commands: list[str] = []

    def run(self, command: str, *, check: bool = True, timeout: float = 60):
        self.commands.append(command)
        return run(["bash", "-c", command], check=check, timeout=timeout)

    def ssh_options(self) -> list[str]:
        return []

    def shell_quote(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in args)


FAKE_CTL = """#!/bin/sh
# A stand-in for libcare-ctl (not libcareplus code): records its arguments, prints a captured output, exits 0.
printf '%s\\n' "$@" > "$KVMLAB_FAKE_ARGS"
cat "$KVMLAB_FAKE_OUTPUT"
"""


def test_apply_on_a_host_runs_there_and_reads_the_process_binary_there(tmp_path, monkeypatch):
    bindir = tmp_path / "libcare"
    fake_tools(bindir)
    (bindir / "libcare-ctl").write_text(FAKE_CTL)
    (tmp_path / "out").write_text(CAPTURED_APPLY_MISMATCH)
    monkeypatch.setenv("KVMLAB_FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("KVMLAB_FAKE_OUTPUT", str(tmp_path / "out"))
    kpatch = tmp_path / f"{LIB_BUILDID}.kpatch"
    kpatch.write_bytes(kpatch_bytes("0001", LIB_BUILDID))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        host = _HostHere()
        assert HostSite(host).exe(sleeper.pid) == os.path.realpath(shutil.which("sleep"))
        with pytest.raises(HotpatchFailed) as caught:
            LibcarePlus(bindir).apply(sleeper.pid, kpatch, host)
    finally:
        sleeper.kill()
        sleeper.wait()
    found = caught.value.diagnosis
    assert isinstance(found, BuildIdMismatch)
    assert found.binary_buildid == build_id(shutil.which("sleep")) and found.patch_buildid == LIB_BUILDID
    # the host sees the runner's kpatch and binary: used in place, nothing copied
    assert (tmp_path / "args").read_text().split() == ["patch", "-p", str(sleeper.pid), str(kpatch)]
    assert any(c.startswith(f"PATH={bindir}:$PATH libcare-ctl patch") for c in host.commands), host.commands
    assert not any("mkdir" in c for c in host.commands)


FAKE_SCP = """#!/bin/sh
# scp -q SRC HOST:DST (the fake host has no ssh options), for a host that is this machine: cp SRC DST
cp "$2" "${3#*:}"
"""


def test_a_kpatch_the_host_does_not_see_is_copied_there_once(tmp_path, monkeypatch):
    class Elsewhere(_HostHere):  # sees only its own staging folder, not the runner's files
        def run(self, command: str, *, check: bool = True, timeout: float = 60):
            if command.startswith("sha256sum") and str(tmp_path / "staging") not in command:
                self.commands.append(command)
                return subprocess.CompletedProcess(command, 1, "", "No such file or directory")
            return super().run(command, check=check, timeout=timeout)

    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "scp").write_text(FAKE_SCP)
    (fakebin / "scp").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fakebin}{os.pathsep}{os.environ['PATH']}")
    kpatch = tmp_path / f"{LIB_BUILDID}.kpatch"
    kpatch.write_bytes(kpatch_bytes("0001", LIB_BUILDID))
    host = Elsewhere()
    site = HostSite(host, staging=str(tmp_path / "staging"))
    staged = site.stage(kpatch)
    assert staged != str(kpatch) and staged.startswith(str(tmp_path / "staging") + "/")
    assert Path(staged).read_bytes() == kpatch.read_bytes() and Path(staged).name == kpatch.name
    copies = sum("mkdir" in c for c in host.commands)
    assert site.stage(kpatch) == staged and sum("mkdir" in c for c in host.commands) == copies == 1


def test_load_base_is_the_executables_offset_zero_mapping():
    maps = ("55ba32ddf000-55ba32e5a000 r--p 00000000 08:01 123 /usr/bin/qemu-system-x86_64\n"
            "55ba32e5a000-55ba33400000 r-xp 0007b000 08:01 123 /usr/bin/qemu-system-x86_64\n"
            "7f46d8f00000-7f46d8f22000 r--p 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert load_base(maps, "/usr/bin/qemu-system-x86_64") == 0x55ba32ddf000
    assert load_base(maps, "/usr/bin/other") is None


def test_lpmakeorig_backups_are_put_back(tmp_path):
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "a.c").write_text("patched\n")
    (tmp_path / "monitor" / "a.c.0.lpmakeorig").write_text("original\n")
    assert restore_lpmakeorig(tmp_path) == [str(tmp_path / "monitor" / "a.c")]
    assert (tmp_path / "monitor" / "a.c").read_text() == "original\n"
    assert not list(tmp_path.rglob("*.lpmakeorig"))


def test_the_suites_patches_name_the_files_they_touch_and_hash_by_content():
    assert patched_files([PATCHES / "0001-query-version-package.patch"]) == ["monitor/qmp-cmds-control.c"]
    assert patched_files([PATCHES / "tiny-object_property_allow_set_link.patch"]) == ["qom/object.c"]
    one = patch_set_hash([PATCHES / "0001-query-version-package.patch"])
    two = patch_set_hash([PATCHES / "0001-query-version-package.patch",
                          PATCHES / "0002-query-version-package-level2.patch"])
    assert one != two and len(one) == 16


# -- QEMU source build: apt deb-src handling ----------------------------------

DEBIAN_SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_deb_src_stanzas_mirror_every_deb_stanza():
    out = deb_src_stanzas(DEBIAN_SOURCES)
    assert out.count("Types: deb-src") == 2
    assert "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n" \
           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in out
    assert "Suites: bookworm-security" in out and "snapshot" not in out


def test_has_deb_src_reads_both_formats(tmp_path):
    (tmp_path / "debian.sources").write_text(DEBIAN_SOURCES)
    none = tmp_path / "none.list"
    assert not has_deb_src(tmp_path, none)
    (tmp_path / "x.sources").write_text("Types: deb deb-src\nURIs: http://x\nSuites: s\nComponents: main\n")
    assert has_deb_src(tmp_path, none)
    (tmp_path / "x.sources").unlink()
    (tmp_path / "y.list").write_text("deb-src http://x s main\n")
    assert has_deb_src(tmp_path, none)

"""Hypervisor stacks: lab.yaml's stacks, the cache (whole or absent), real downloads and real failures,
and an embedded host that runs another stack than its neighbour.

The archive tests read Debian's bookworm-backports from the mirror apt already uses (about 17 MB,
a few seconds) into a scratch cache of this module's own; the failures are real ones: a version
the archive does not have, a mirror nobody answers at (127.0.0.1:9, refused at once), and a fetch
interrupted (SIGINT) or killed (SIGKILL) while it downloads or unpacks.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab.config.lab import load_lab_config, parse_lab_config
from lab.config.stacks import StackSpec
from lab.errors import ConfigError, StackError
from lab.runtime.state import StackRecord
from lab.stacks.archive import matches, upstream
from lab.stacks.cache import PARTIAL, StackCache
from lab.stacks.pins import playbook_stack
from lab.stacks.resolve import ensure_stack
from lab.stacks.tree import mount_lines, running_mismatch
from tests.labtools import lab_cli, leftovers, nothing_left

REPO = Path(__file__).resolve().parent.parent
TWO_HOSTS = "hosts:\n  - {name: hv1, address: 198.18.0.11}\n  - {name: hv2, address: 198.18.0.12, stack: %s}\n"
BACKPORTS = {"source": "archive", "suite": "bookworm-backports", "qemu": "10.0.2", "libvirt": "11.3.0"}
UNREACHABLE = "http://127.0.0.1:9/debian"  # the discard port: nobody listens, the connection is refused

BAD = {
    "unknown-stack-name": ("stacks: {backports: {source: archive, qemu: 10.0.2}}\n" + TWO_HOSTS % "backprots",
                           "hosts[1].stack: unknown stack 'backprots' (stacks: system, backports)"),
    "unknown-source": ("stacks: {b: {source: apt, qemu: 10.0.2}}\n",
                       "stacks.b.source: 'apt' is not one of system, archive, build, path"),
    "system-redefined": ("stacks: {system: {source: path, path: /opt/tree}}\n",
                         "stacks.system: is built in (the installed packages); give this stack another name"),
    "archive-without-version": ("stacks: {b: {source: archive}}\n",
                                "stacks.b.qemu: missing: an archive stack names a qemu or a libvirt version"),
    "version-as-number": ("stacks: {b: {source: archive, qemu: 10.0}}\n",
                          "stacks.b.qemu: 10.0 is a number, not a version: quote it (qemu: '10.0')"),
    "not-a-version": ("stacks: {b: {source: archive, qemu: latest}}\n", "stacks.b.qemu: 'latest' is not a version"),
    "field-of-another-source": ("stacks: {b: {source: archive, qemu: 10.0.2, path: /opt/tree}}\n",
                                "stacks.b.path: a source: archive stack takes no path"),
    "path-not-absolute": ("stacks: {b: {source: path, path: tree}}\n", "stacks.b.path: 'tree' is not an absolute path"),
    "bad-mirror": ("stacks: {b: {source: archive, qemu: 10.0.2, mirror: deb.debian.org}}\n",
                   "stacks.b.mirror: 'deb.debian.org' is not a mirror URL"),
    "bad-stack-name": ("stacks: {Cand: {source: system}}\n", "stacks.Cand: 'Cand' is not a stack name"),
    "misspelt-key": ("stacks: {b: {source: archive, qemu: 10.0.2, sutie: x}}\n", "stacks.b.sutie: unknown key"),
    "static-backend-build": ("backend: static\nstacks: {b: {source: build, qemu: '7.2'}}\nhosts:\n"
                             "  - {name: hv1, address: 198.18.0.11, ssh_key: /k}\n"
                             "  - {name: hv2, address: 198.18.0.12, ssh_key: /k, stack: b}\n",
                             "hosts[1].stack: stack 'b' (source: build) cannot be put on a static host"),
    "vagrant-backend-path": ("backend: vagrant\nstacks: {b: {source: path, path: /opt/tree, qemu: 10.0.2}}\n"
                             "hosts:\n  - {name: hv1, address: 198.19.200.11}\n"
                             "  - {name: hv2, address: 198.19.200.12, stack: b}\n",
                             "hosts[1].stack: stack 'b' (source: path) cannot be put on a vagrant host"),
}


@pytest.mark.parametrize("text,expected", list(BAD.values()), ids=list(BAD))
def test_bad_stacks_in_lab_yaml_give_one_line_naming_the_field(tmp_path, text, expected):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_lab_config(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_hosts_run_system_unless_told_and_the_shipped_lab_names_two_stacks():
    assert {h.stack for h in parse_lab_config({}).hosts} == {"system"}
    config = load_lab_config(REPO / "labs" / "stacks.yaml")
    assert [h.stack for h in config.hosts] == ["system", "bookworm-backports"]
    assert config.stacks["bookworm-backports"] == StackSpec(**BACKPORTS)


def test_unknown_stack_on_the_command_line_is_one_line_and_makes_nothing(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("name: kvmstkc\n" + BAD["unknown-stack-name"][0].replace("198.18.0", "198.19.91")
                    + "network: {subnet: 198.19.91.0/24, runner_address: 198.19.91.1, guest_range: 198.19.91.128/25}\n")
    proc = lab_cli(path, "up", timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "hosts[1].stack: unknown stack 'backprots'" in proc.stderr and "Traceback" not in proc.stderr
    assert nothing_left("kvmstkc"), leftovers("kvmstkc")


def test_versions_match_upstream_or_exact():
    assert upstream("1:10.0.2+ds-2+deb13u1~bpo12+1") == "10.0.2" and upstream("11.3.0-2~bpo12+1") == "11.3.0"
    assert upstream("1:7.2+dfsg-7+deb12u18+b3") == "7.2"
    assert matches("10.0.2", "1:10.0.2+ds-2+deb13u1~bpo12+1") and matches("10.0", "1:10.0.2+ds-2")
    assert matches("1:10.0.2+ds-2", "1:10.0.2+ds-2") and not matches("10.0.20", "1:10.0.2+ds-2")
    system = StackRecord(qemu_upstream="7.2", libvirt_upstream="9.0.0")
    assert running_mismatch(system, "7.2.22", "9.0.0") == ""  # Debian's 7.2 is QEMU 7.2.22
    assert running_mismatch(system, "10.0.2", "9.0.0") == "QEMU 10.0.2 where stack 'system' has 7.2"


def test_the_system_stack_mounts_nothing_and_names_the_installed_packages():
    record = ensure_stack("system", StackSpec(source="system"), lambda _m: None)
    assert record.layers == [] and mount_lines(record) == []
    assert record.qemu.startswith("1:7.2") and record.libvirt.startswith("9.0.0"), record


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> StackCache:
    """A scratch stacks cache holding bookworm-backports' QEMU 10.0.2 and libvirt 11.3.0 (fetched for real)."""
    scratch = StackCache(tmp_path_factory.mktemp("stacks"))
    ensure_stack("backports", StackSpec(**BACKPORTS), lambda _m: None, scratch)
    return scratch


@pytest.mark.build
def test_an_archive_stack_is_fetched_whole_into_the_cache_by_exact_version(cache):
    (qemu,) = cache.entries("qemu")
    (libvirt,) = cache.entries("libvirt")
    assert qemu.manifest["version"] == "1:10.0.2+ds-2+deb13u1~bpo12+1" and qemu.dir.name.startswith("qemu_1%3a10.0.2")
    assert libvirt.manifest["version"] == "11.3.0-2~bpo12+1"
    assert (qemu.usr / "bin" / "qemu-system-x86_64").is_file() and (libvirt.usr / "sbin" / "libvirtd").is_file()
    assert not list(cache.archive.glob(PARTIAL + "*")) and not (qemu.dir / "debs").exists()
    assert list(cache.root.glob("apt/*/lists/*bookworm-backports*"))  # the index is the cache's own:
    assert not any("backports" in p.name for p in Path("/var/lib/apt/lists").iterdir())  # nothing system-wide


@pytest.mark.build
def test_a_cached_stack_needs_no_network(cache):
    """The same stack asked for again with a mirror nobody answers at comes from the cache."""
    said = []
    record = ensure_stack("backports", StackSpec(**{**BACKPORTS, "mirror": UNREACHABLE}), said.append, cache)
    assert record.qemu_upstream == "10.0.2" and record.libvirt_upstream == "11.3.0"
    assert not any("reading" in line or "fetching" in line for line in said), said
    lines = mount_lines(record)
    assert lines[0].startswith("mount -t overlay overlay -o 'lowerdir=") and lines[0].endswith(":/usr' /usr")
    assert set(record.binds.values()) == {"/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/x86_64-linux-gnu/libvirt"}


@pytest.mark.build
def test_a_version_not_in_the_archive_is_one_line_and_installs_nothing(cache):
    before = sorted(p.name for p in cache.archive.iterdir())
    with pytest.raises(StackError) as info:
        ensure_stack("candidate", StackSpec(source="archive", qemu="10.0.99"), lambda _m: None, cache)
    assert str(info.value).startswith("stacks.candidate.qemu: 10.0.99 is not in bookworm-backports at ")
    assert "qemu-system-x86 there: 1:10.0.2+ds-2+deb13u1~bpo12+1" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in cache.archive.iterdir()) == before


@pytest.mark.build
def test_lab_up_with_a_version_not_in_the_archive_stops_before_making_anything(tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text(yaml.safe_dump({
        "name": "kvmstkv", "network": {"subnet": "198.19.92.0/24", "runner_address": "198.19.92.1",
                                       "guest_range": "198.19.92.128/25", "nfs_address": "198.19.92.10"},
        "stacks": {"candidate": {"source": "archive", "qemu": "10.0.99"}},
        "hosts": [{"name": "hv1", "address": "198.19.92.11"},
                  {"name": "hv2", "address": "198.19.92.12", "stack": "candidate"}]}))
    proc = lab_cli(config, "up", timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("lab: error: stacks.candidate.qemu: 10.0.99 is not in bookworm-backports at "), last
    assert nothing_left("kvmstkv"), leftovers("kvmstkv")


@pytest.mark.build
def test_an_unreachable_archive_is_one_line_and_installs_nothing(tmp_path):
    fresh = StackCache(tmp_path / "stacks")
    with pytest.raises(StackError) as info:
        ensure_stack("candidate", StackSpec(**{**BACKPORTS, "mirror": UNREACHABLE}), lambda _m: None, fresh)
    message = str(info.value)
    assert message.startswith(f"stacks.candidate: apt-get update of bookworm-backports at {UNREACHABLE}: ")
    assert "Connection refused" in message and "\n" not in message
    assert list(fresh.archive.iterdir()) == []


def test_a_path_stack_without_usr_is_one_line(tmp_path):
    with pytest.raises(StackError, match=r"stacks.mine.path: .*/usr is not a directory"):
        ensure_stack("mine", StackSpec(source="path", path=str(tmp_path)), lambda _m: None)


def _fetch_and_stop(tmp_path: Path, sig: int) -> tuple[subprocess.CompletedProcess | None, str, StackCache]:
    """`python -m lab.stacks fetch` into a fresh cache, stopped by `sig` once a package is on disk."""
    config = tmp_path / "lab.yaml"
    config.write_text(yaml.safe_dump({"stacks": {"candidate": BACKPORTS}}))
    cache = StackCache(tmp_path / "stacks")
    # A stand-in that waits 5 s, then runs the real dpkg-deb: it holds the fetch between "packages on disk"
    # and "unpacked", so the signal lands inside the fetch. Without it the whole 17 MB fetch twice ended
    # (exit 0) between the test seeing a package and its signal (CI on this machine).
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "dpkg-deb").write_text('#!/bin/sh\nsleep 5\nexec /usr/bin/dpkg-deb "$@"\n')
    (slow / "dpkg-deb").chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "lab.stacks", "--lab-config", str(config), "fetch", "candidate"],
                            env={**os.environ, "LAB_STACK_CACHE": str(cache.root),
                                 "PATH": f"{slow}:{os.environ['PATH']}"},
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A runner started in the background (nohup, `&` without job control) ignores SIGINT, and
                            # a child inherits that: Python would then never raise KeyboardInterrupt (seen: a fresh
                            # `.ci/run` under nohup timed out here). A user's Ctrl-C reaches a fetch with the default.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    phase, deadline = "", time.monotonic() + 120
    while not phase and time.monotonic() < deadline and proc.poll() is None:
        for partial in cache.archive.glob(PARTIAL + "*") if cache.archive.is_dir() else ():
            if (partial / "tree").exists():
                phase = "unpacking"
            elif list((partial / "debs").glob("*.deb")):
                phase = "downloading"
        time.sleep(0.002)
    assert phase, f"the fetch never got half way (exit {proc.poll()}): {proc.stderr.read() if proc.poll() else ''}"
    os.kill(proc.pid, sig)  # our own child, by its PID
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), phase, cache


@pytest.mark.build
def test_an_interrupted_fetch_leaves_nothing(tmp_path):
    done, phase, cache = _fetch_and_stop(tmp_path, signal.SIGINT)
    assert done.returncode == 130, (phase, done.stderr)
    assert "nothing half-installed is left" in done.stderr
    assert cache.entries("qemu") == [] and list(cache.archive.iterdir()) == [], phase


@pytest.mark.build
def test_a_killed_fetch_leaves_no_tree_and_the_next_fetch_clears_its_remains(tmp_path):
    done, phase, cache = _fetch_and_stop(tmp_path, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    remains = list(cache.archive.glob(PARTIAL + "*"))
    assert remains and cache.entries("qemu") == [], phase  # half a download, never taken for a tree
    said = []
    record = ensure_stack("candidate", StackSpec(**BACKPORTS), said.append, cache)
    assert any(f"removing {remains[0].name}, left by an interrupted fetch" in line for line in said), said
    assert not list(cache.archive.glob(PARTIAL + "*")) and record.qemu == "1:10.0.2+ds-2+deb13u1~bpo12+1"


@pytest.mark.lab
@pytest.mark.usefixtures("shared_lab")
def test_a_host_that_does_not_run_its_stack_stops_up_and_leaves_nothing(tmp_path, cache):
    """hv2 gets a real tree of QEMU 10.0.2 + libvirt 11.3.0 (a path stack) whose lab.yaml says QEMU 9.9.9:
    its libvirtd reports 10.0.2, so `up` stops with one line and removes the half lab."""
    tree = tmp_path / "tree"
    for entry in (*cache.entries("qemu"), *cache.entries("libvirt")):
        subprocess.run(["cp", "-a", f"{entry.dir}/tree/.", str(tree)], check=True)
    config = tmp_path / "lab.yaml"
    config.write_text(yaml.safe_dump({
        "name": "kvmstkt",
        "network": {"subnet": "198.19.90.0/24", "runner_address": "198.19.90.1", "guest_range": "198.19.90.128/25",
                    "nfs_address": "198.19.90.10"},
        "stacks": {"wrong": {"source": "path", "path": str(tree), "qemu": "9.9.9"}},
        "hosts": [{"name": "hv1", "address": "198.19.90.11"},
                  {"name": "hv2", "address": "198.19.90.12", "stack": "wrong"}]}))
    try:
        proc = lab_cli(config, "up", timeout=300)
    finally:
        down = lab_cli(config, "down")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lab: error: hv2: libvirtd reports QEMU 10.0.2 where stack 'wrong' has 9.9.9"), last
    assert down.returncode == 0 and nothing_left("kvmstkt"), leftovers("kvmstkt")


PATCH_0001 = REPO / "suites" / "hotpatch" / "patches" / "0001-query-version-package.patch"


def _qmp_package(binary: Path) -> str:
    """QMP query-version's `package`, asked of the binary itself (no guest)."""
    commands = '{"execute": "qmp_capabilities"}\n{"execute": "query-version"}\n{"execute": "quit"}\n'
    out = subprocess.run([str(binary), "-machine", "none", "-nodefaults", "-display", "none", "-qmp", "stdio"],
                         input=commands, capture_output=True, text=True, timeout=60).stdout
    replies = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return next(r["return"]["package"] for r in replies if isinstance(r.get("return"), dict) and "package" in r["return"])


@pytest.mark.slow
def test_a_qemu_source_build_is_a_stack_with_its_patches_applied():
    """QEMU 7.2 from the distro's source with the hot patch suite's 0001 patch (query-version's package
    gains " +hotpatch-0001"): built into the stacks cache (about 6 minutes the first time), then reused."""
    spec = StackSpec(source="build", qemu="7.2", patches=(str(PATCH_0001),))
    record = ensure_stack("fixed", spec, lambda _m: None)
    assert record.source == "build" and record.qemu_upstream == "7.2" and record.binds == {}
    (usr,) = record.layers
    package = _qmp_package(Path(usr) / "bin" / "qemu-system-x86_64")
    assert package.startswith("kvm-lab stack fixed ") and package.endswith(" +hotpatch-0001"), package
    said = []
    assert ensure_stack("fixed", spec, said.append) == record and not any("building" in s for s in said), said


@pytest.mark.slow
def test_a_patch_that_does_not_apply_is_one_line_and_installs_nothing(tmp_path):
    bad = tmp_path / "bad.patch"
    bad.write_text(PATCH_0001.read_text().replace("info->package = g_strdup(QEMU_PKGVERSION);",
                                                  "info->package = g_strdup(NO_SUCH_LINE);"))
    cache = StackCache(tmp_path / "stacks")
    with pytest.raises(StackError) as info:
        ensure_stack("broken", StackSpec(source="build", qemu="7.2", patches=(str(bad),)), lambda _m: None, cache)
    message = str(info.value)
    assert message.startswith(f"stacks.broken.patches: {bad} does not apply to qemu 1:7.2") and "\n" not in message
    assert cache.entries("qemu-build") == [] and not list(cache.archive.iterdir())
    assert "FAILED" in Path(message.rsplit("see ", 1)[1]).read_text()  # patch's own words, in the kept log


# -- stacks on hosts of their own: the playbook installs them (provision/roles/stack) ----------------

@pytest.mark.build
def test_playbook_pins_every_package_at_the_exact_version_the_request_names(cache):
    stack = playbook_stack("backports", StackSpec(**BACKPORTS), lambda _m: None, cache)
    assert stack["qemu"] == "1:10.0.2+ds-2+deb13u1~bpo12+1" and stack["libvirt"] == "11.3.0-2~bpo12+1"
    assert stack["suite"] == "bookworm-backports" and stack["mirror"].startswith("http")
    pins = dict(p.split("=", 1) for p in stack["packages"])
    assert pins["qemu-system-x86"] == pins["qemu-utils"] == stack["qemu"]
    assert pins["libvirt-daemon-system"] == pins["libvirt-clients"] == stack["libvirt"]
    assert {"libvirt-daemon-driver-qemu", "libvirt0", "qemu-system-common", "qemu-block-extra"} <= set(pins)
    assert not any("backports" in p.name for p in Path("/var/lib/apt/lists").iterdir())  # nothing system-wide


@pytest.mark.build
def test_the_playbook_takes_no_stack_it_cannot_install(cache):
    with pytest.raises(StackError, match=r"^stacks.fixed: source build cannot be installed by the playbook"):
        playbook_stack("fixed", StackSpec(source="build", qemu="7.2"), lambda _m: None, cache)


@pytest.mark.build
def test_pins_command_prints_each_hosts_lab_stack_as_inventory_yaml(cache):
    # The module's scratch cache: the machine's is locked for minutes while the session lab builds its stack.
    proc = subprocess.run([sys.executable, "-m", "lab.stacks", "--lab-config", str(REPO / "labs/vagrant-stacks.yaml"),
                           "pins"], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "LAB_STACK_CACHE": str(cache.root)})
    assert proc.returncode == 0, proc.stderr
    hosts = yaml.safe_load(proc.stdout)["all"]["hosts"]
    assert list(hosts) == ["hv2"] and hosts["hv2"]["lab_stack"]["qemu"] == "1:10.0.2+ds-2+deb13u1~bpo12+1"


@pytest.mark.build
def test_a_vagrant_lab_with_a_version_not_in_the_archive_stops_before_making_anything(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("LAB_STACK_CACHE", str(cache.root))  # as above: not the machine's cache and its lock
    text = (REPO / "labs/vagrant-stacks.yaml").read_text().replace("name: kvmvst", "name: kvmvsb")
    config = tmp_path / "lab.yaml"
    config.write_text(text.replace("qemu: 10.0.2,", "qemu: 10.0.99,"))
    proc = lab_cli(config, "up", timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("lab: error: stacks.bookworm-backports.qemu: 10.0.99 is not in bookworm-backports"), last
    assert nothing_left("kvmvsb"), leftovers("kvmvsb")

"""Build a Vagrant libvirt box locally from distro packages (for machines that cannot download boxes).

    python -m lab.backends.vagrant.box build [--name kvmlab/bookworm] [--out DIR] [--force]

debootstrap (minbase) of Debian bookworm, then the hypervisor packages installed
by chroot (far faster than apt inside a TCG VM; Ansible then finds them present),
the `vagrant` user with Vagrant's insecure public key and passwordless sudo,
`mke2fs -d` straight from the root directory (no loop device), `qemu-img convert`
to qcow2, and a box tar of box.img + metadata.json + a Vagrantfile.

The image has no boot loader: the box's own Vagrantfile boots it with direct
kernel boot (`libvirt.kernel`/`initrd`, files kept next to the box). So the box
is meant for the machine that built it, which is the point.

Output: DIR/<slug>.box, DIR/<slug>.vmlinuz, DIR/<slug>.initrd, DIR/<slug>.json
(what went in: suite, packages, kernel version, build seconds).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ImageError, LabError, MissingToolError
from lab.util.process import run

DEFAULT_OUT = Path("/var/cache/kvm-acceptance-lab/vagrant/boxes")
DEFAULT_NAME = "kvmlab/bookworm"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What debootstrap puts in (enough to boot, log in over SSH and run apt).
BASE_PACKAGES = ("openssh-server", "sudo", "systemd-sysv", "ifupdown", "isc-dhcp-client", "linux-image-cloud-amd64",
                 "ca-certificates", "iproute2", "netbase", "python3")
# Everything provision/site.yml installs (roles common, hypervisor, nfs_server), pre-installed by chroot:
# the playbook still declares them (the one truth for real hosts) but finds them here, so inside the
# TCG VMs it only configures. tests/test_vagrant_lab.py checks this list covers the roles' lists.
LAB_PACKAGES = ("qemu-system-x86", "qemu-utils", "qemu-block-extra", "libvirt-daemon-system", "libvirt-clients",
                "python3-apt", "bridge-utils", "nftables", "nfs-kernel-server", "nfs-common", "chrony", "kmod",
                "procps", "iputils-ping", "less")
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0"
VAGRANT_PUBKEY_GLOB = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"


@dataclass(frozen=True)
class BuiltBox:
    name: str
    box: Path
    kernel: Path
    initrd: Path
    manifest: Path


def slug(name: str) -> str:
    return name.replace("/", "-")


def paths(name: str = DEFAULT_NAME, out: Path = DEFAULT_OUT) -> BuiltBox:
    s = slug(name)
    return BuiltBox(name, out / f"{s}.box", out / f"{s}.vmlinuz", out / f"{s}.initrd", out / f"{s}.json")


def _run(argv: list[str], log, **kw) -> None:
    run(argv, log=log, timeout=3600, error=ImageError, what=f"box build: `{' '.join(argv[:4])} ...`", **kw)


def _need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise MissingToolError(f"box build needs {', '.join(missing)} (apt-get install debootstrap qemu-utils e2fsprogs)")


def _vagrant_pubkey() -> str:
    found = sorted(glob.glob(VAGRANT_PUBKEY_GLOB))
    if not found:
        raise MissingToolError("Vagrant's insecure public key not found (apt-get install vagrant)")
    return Path(found[-1]).read_text().strip()


def _chroot_install(root: Path, packages: tuple[str, ...], log) -> None:
    """apt-get install inside the root, with /proc, /sys, /dev bound and service starts denied."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    mounts = []
    try:
        for src, dst in (("/proc", "proc"), ("/sys", "sys"), ("/dev", "dev"), ("/dev/pts", "dev/pts")):
            _run(["mount", "--bind", src, str(root / dst)], log)
            mounts.append(root / dst)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        _run(["chroot", str(root), "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], log, env=env)
        _run(["chroot", str(root), "apt-get", "clean"], log, env=env)
        # No package lists in the box: Ansible's apt module parses them all (some 60,000 packages) before
        # it finds a package installed, 20-40 s per apt task in a TCG VM; without them it reads only
        # dpkg's status. A package that is missing makes the role's rescue run `apt-get update` first.
        for lists in (root / "var/lib/apt/lists").glob("*"):
            if lists.is_file():
                lists.unlink()
    finally:
        for m in reversed(mounts):
            run(["umount", "-l", m], check=False, log=log)
        policy.unlink(missing_ok=True)


def _configure(root: Path, pubkey: str, log) -> None:
    (root / "etc/hostname").write_text("vagrant\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 vagrant\n::1 localhost ip6-localhost ip6-loopback\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc/network/interfaces").write_text(
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
        "allow-hotplug eth0\niface eth0 inet dhcp\n")
    _run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-U", "vagrant"], log)
    ssh = root / "home/vagrant/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey + "\n")
    (ssh / "authorized_keys").chmod(0o600)
    _run(["chroot", str(root), "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"], log)
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n")
    sudoers.chmod(0o440)
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/vagrant.conf").write_text("UseDNS no\nGSSAPIAuthentication no\n")
    # Host keys are made on first boot (each VM its own), not baked into the box.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit = root / "etc/systemd/system/ssh-hostkeys.service"
    unit.write_text("[Unit]\nDescription=SSH host keys on first boot\nBefore=ssh.service\n"
                    "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
                    "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
                    "[Install]\nWantedBy=multi-user.target\n")
    _run(["chroot", str(root), "systemctl", "enable", "ssh-hostkeys.service", "ssh.service"], log)
    # Under TCG a background apt run costs the lab minutes of CPU at random times.
    _run(["chroot", str(root), "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer"], log)
    # Nothing the distro starts may reach outside the lab before the playbook configures it: chrony
    # without its internet pools (the playbook points it at the runner), libvirt's default NAT
    # network (192.168.122.0/24, a private range) not autostarted.
    (root / "etc/chrony/chrony.conf").write_text("# The lab's playbook sets the time server (role common).\n"
                                                 "driftfile /var/lib/chrony/chrony.drift\n")
    (root / "etc/libvirt/qemu/networks/autostart/default.xml").unlink(missing_ok=True)
    # A fresh machine-id per VM (systemd makes one on first boot when the file is empty).
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus").mkdir(parents=True, exist_ok=True)
    Path(root / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def box_vagrantfile(kernel: Path, initrd: Path) -> str:
    """Shipped inside the box: direct kernel boot, as the image has no boot loader."""
    return (
        "Vagrant.configure('2') do |config|\n"
        "  config.vm.provider :libvirt do |lv|\n"
        f"    lv.kernel = '{kernel}'\n"
        f"    lv.initrd = '{initrd}'\n"
        f"    lv.cmd_line = '{CMDLINE}'\n"
        "    lv.disk_bus = 'virtio'\n"
        "  end\n"
        "end\n"
    )


def build(name: str = DEFAULT_NAME, out: Path = DEFAULT_OUT, suite: str = DEFAULT_SUITE,
          mirror: str = DEFAULT_MIRROR, size_gib: int = 8, force: bool = False,
          progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> BuiltBox:
    """Build the box unless it is there already; returns its paths."""
    if os.geteuid() != 0:
        raise ImageError("box build: run as root (debootstrap and chroot need it)")
    _need("debootstrap", "mke2fs", "qemu-img", "chroot", "tar")
    target = paths(name, out)
    if target.box.exists() and target.kernel.exists() and target.initrd.exists() and not force:
        progress(f"box {name}: already built at {target.box}")
        return target
    out.mkdir(parents=True, exist_ok=True)
    pubkey = _vagrant_pubkey()
    work = Path(tempfile.mkdtemp(prefix=f"{slug(name)}-", dir=out))
    log_path = out / f"{slug(name)}.log"
    started = time.monotonic()
    timings: dict[str, float] = {}
    try:
        with open(log_path, "w") as log:
            root = work / "root"
            t = time.monotonic()
            progress(f"box {name}: debootstrap {suite} (minbase) from {mirror}")
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(root),
                  mirror], log)
            timings["debootstrap_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            progress(f"box {name}: installing the lab packages by chroot ({len(LAB_PACKAGES)} packages)")
            _chroot_install(root, LAB_PACKAGES, log)
            timings["packages_s"] = round(time.monotonic() - t, 1)
            _configure(root, pubkey, log)
            kernels = sorted((root / "boot").glob("vmlinuz-*"))
            if not kernels:
                raise ImageError("box build: no kernel in the image's /boot")
            version = kernels[-1].name.removeprefix("vmlinuz-")
            initrd = root / "boot" / f"initrd.img-{version}"
            if not initrd.exists():
                raise ImageError(f"box build: {initrd} missing (initramfs-tools did not run)")
            t = time.monotonic()
            progress(f"box {name}: writing a {size_gib} GiB ext4 image from the root (mke2fs -d), then qcow2")
            raw = work / "box.raw"
            _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(root), str(raw), f"{size_gib}G"], log)
            _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "box.img")], log)
            raw.unlink()
            timings["image_s"] = round(time.monotonic() - t, 1)
            shutil.copy2(kernels[-1], target.kernel)
            shutil.copy2(initrd, target.initrd)
            (work / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2",
                                                            "virtual_size": size_gib}))
            (work / "Vagrantfile").write_text(box_vagrantfile(target.kernel, target.initrd))
            tmp_box = target.box.with_suffix(".box.tmp")
            _run(["tar", "-cf", str(tmp_box), "-C", str(work), "metadata.json", "Vagrantfile", "box.img"], log)
            os.replace(tmp_box, target.box)
            timings["total_s"] = round(time.monotonic() - started, 1)
            target.manifest.write_text(json.dumps({
                "name": name, "suite": suite, "mirror": mirror, "kernel": version, "size_gib": size_gib,
                "base_packages": BASE_PACKAGES, "lab_packages": LAB_PACKAGES, "cmdline": CMDLINE,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **timings}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"box {name}: built in {time.monotonic() - started:.0f} s: {target.box} (log {log_path})")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.backends.vagrant.box", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a libvirt box with debootstrap")
    b.add_argument("--name", default=DEFAULT_NAME, help=f"box name (default {DEFAULT_NAME})")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    b.add_argument("--suite", default=DEFAULT_SUITE)
    b.add_argument("--mirror", default=DEFAULT_MIRROR)
    b.add_argument("--size-gib", type=int, default=8)
    b.add_argument("--force", action="store_true", help="rebuild even if the box exists")
    p = sub.add_parser("path", help="print where the box for NAME is (or would be) built")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    try:
        if args.command == "path":
            print(paths(args.name, args.out).box)
            return 0
        built = build(args.name, args.out, args.suite, args.mirror, args.size_gib, args.force)
        print(built.box)
        return 0
    except LabError as exc:
        print(f"box: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The provisioned-VM cache: the Vagrant lab's VMs as the playbook left them, so that the next `up` of the
same lab.yaml starts them instead of making and provisioning them again (minutes under TCG).

    python -m lab.backends.vagrant.cache list
    python -m lab.backends.vagrant.cache clear [--lab NAME]

Why disk images and not `vagrant snapshot` (libvirt internal snapshots): a snapshot lives inside the
VM's disk in the lab's storage pool, which `down` removes with everything else the lab made. The cache
must outlive `down`, so it is kept under /var/cache/kvm-acceptance-lab/vagrant/provisioned/<lab>/:

- `<vm>.qcow2`: the VM's own disk layer (what booting and provisioning changed), copied while an
  external disk-only snapshot holds it still (after a `sync` in the VM; the VM runs on, and is put
  back onto its layer by a shallow active block commit); its backing file is `box.img`, a hard link
  to (or copy of) the box volume it was made from;
- `<vm>.xml`: the libvirt domain as vagrant-libvirt defined it; `dot-vagrant/`: Vagrant's machine
  records (domain id, its SSH key); the lab's key pair and known_hosts (the VMs trust that key);
- `manifest.json`, written last: the key (lab.yaml digest, the box's build, the playbook's and the
  Vagrantfile's contents, the driver) and the inner accelerator's figures.

A warm `up` gives each VM a fresh layer on top of its cached one (qemu-img create -b: no copy),
defines the domains, puts Vagrant's records back and runs `vagrant up`, which boots them as
halted machines. A changed key clears the cache; `down` keeps it (it is a cache, not part of a lab).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from lab.backends.base import Progress
from lab.errors import BackendError, LabError
from lab.runtime.layout import CACHE_ROOT, LabLayout
from lab.util.files import atomic_write_json
from lab.util.process import run

ROOT = CACHE_ROOT / "vagrant" / "provisioned"
HERE = Path(__file__).resolve().parent
PROVISION = HERE.parents[2] / "provision"


def cache_dir(lab: str) -> Path:
    return ROOT / lab


def _tree_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            h.update(str(p.relative_to(root.parent)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def cache_key(config_digest: str, box_stamp: str, driver: str) -> str:
    """What the cached VMs depend on: lab.yaml, the box's build, the playbook, the Vagrantfile, the driver."""
    parts = [config_digest, box_stamp, driver, _tree_digest([PROVISION, HERE / "Vagrantfile"])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def manifest(lab: str) -> dict | None:
    try:
        return json.loads((cache_dir(lab) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def usable(lab: str, key: str, vms: list[str]) -> dict | None:
    """The manifest when the cache holds these VMs under this key, with every file present; else None."""
    found = manifest(lab)
    d = cache_dir(lab)
    if not found or found.get("key") != key or sorted(found.get("vms", [])) != sorted(vms):
        return None
    files = [d / "box.img", d / "dot-vagrant", d / "id_ed25519", d / "known_hosts"]
    files += [d / f"{vm}.{ext}" for vm in vms for ext in ("qcow2", "xml")]
    return found if all(p.exists() for p in files) else None


def clear(lab: str, progress: Progress) -> bool:
    d = cache_dir(lab)
    if not d.exists():
        return False
    shutil.rmtree(d)
    progress(f"provisioned-VM cache of lab {lab} cleared ({d})")
    return True


def _disk(xml: str) -> str:
    """The first file disk of a domain (vagrant-libvirt's VM disk, vda)."""
    for disk in ET.fromstring(xml).findall("./devices/disk[@device='disk']"):
        source = disk.find("source")
        if source is not None and source.get("file"):
            return source.get("file")
    raise BackendError("the VM's domain has no file disk to cache")


def _backing(image: str) -> str:
    info = json.loads(run(["qemu-img", "info", "-U", "--output=json", image], error=BackendError).stdout)
    return info.get("full-backing-filename") or info.get("backing-filename") or ""


def _link_or_copy(src: str, dst: Path) -> None:
    try:
        os.link(src, dst)  # the box volume is never written: a link costs nothing
    except OSError:
        run(["cp", "--sparse=always", src, dst], timeout=1800, error=BackendError)


def save(virsh, *, lab: str, key: str, prefix: str, vms: dict[str, str], work: Path, ssh_config: Path,
         extra: dict, progress: Progress) -> float:
    """Cache the running, provisioned VMs (name -> address on the migration network); seconds taken."""
    started = time.monotonic()
    d = cache_dir(lab)
    clear(lab, lambda _msg: None)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for vm, address in vms.items():
            dom = prefix + vm
            xml = virsh("dumpxml", "--inactive", dom).stdout
            disk = _disk(xml)
            run(["ssh", "-F", ssh_config, f"root@{address}", "sync"], check=False, timeout=120)
            virsh("snapshot-create-as", dom, "--disk-only", "--atomic", "--no-metadata",
                  "--diskspec", f"vda,snapshot=external,file={disk}.run", timeout=300)
            try:
                backing = _backing(disk)
                if not (tmp / "box.img").exists():
                    if not backing:
                        raise BackendError(f"{dom}: its disk {disk} has no backing box volume")
                    _link_or_copy(backing, tmp / "box.img")
                run(["cp", "--sparse=always", disk, tmp / f"{vm}.qcow2"], timeout=1800, error=BackendError)
            finally:
                # Back onto its own disk (the small new layer merged down, the VM pivoted onto it): the
                # domain is as Vagrant made it, so `vagrant destroy` finds its volumes.
                virsh("blockcommit", dom, "vda", "--active", "--shallow", "--pivot", "--wait", timeout=600)
                Path(f"{disk}.run").unlink(missing_ok=True)
            run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", d / "box.img", tmp / f"{vm}.qcow2"],
                error=BackendError)
            (tmp / f"{vm}.xml").write_text(xml)
        shutil.copytree(work / ".vagrant", tmp / "dot-vagrant", symlinks=True)
        for index in (tmp / "dot-vagrant").rglob("index_uuid"):
            index.unlink()  # Vagrant's machine index forgets destroyed machines; it registers them again
        layout = LabLayout(lab)
        for src in (layout.key, layout.public_key, layout.known_hosts):
            shutil.copy2(src, tmp / src.name)
        took = round(time.monotonic() - started, 1)
        atomic_write_json(tmp / "manifest.json", {"key": key, "lab": lab, "vms": sorted(vms), "prefix": prefix,
                                                  "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                  "save_s": took, **extra})
        os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"provisioned VMs cached in {d} in {took:.0f} s (the next `up` of this lab.yaml starts from them; "
             f"`python -m lab.backends.vagrant.cache clear --lab {lab}` forgets them)")
    return took


def restore(virsh, *, lab: str, vms: list[str], work: Path, progress: Progress) -> None:
    """Domains defined on fresh layers over the cached disks, Vagrant's records and the lab's key back."""
    d = cache_dir(lab)
    for vm in vms:
        xml = (d / f"{vm}.xml").read_text()
        disk = _disk(xml)
        Path(disk).unlink(missing_ok=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", d / f"{vm}.qcow2", disk],
            error=BackendError)
        virsh("define", str(d / f"{vm}.xml"))
    virsh("pool-refresh", lab, check=False)
    shutil.rmtree(work / ".vagrant", ignore_errors=True)
    shutil.copytree(d / "dot-vagrant", work / ".vagrant", symlinks=True)
    layout = LabLayout(lab)
    layout.dir.mkdir(parents=True, exist_ok=True)
    for name in ("id_ed25519", "id_ed25519.pub", "known_hosts"):
        shutil.copy2(d / name, layout.dir / name)
    layout.key.chmod(0o600)
    progress(f"VMs {', '.join(vms)} defined on their provisioned disks from {d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.backends.vagrant.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the cached labs, their key and when they were made")
    c = sub.add_parser("clear", help="forget the provisioned VMs of one lab (--lab) or of all")
    c.add_argument("--lab", help="lab name (lab.yaml name:); default: every lab")
    args = parser.parse_args(argv)
    try:
        labs = sorted(p.name for p in ROOT.iterdir() if p.is_dir()) if ROOT.is_dir() else []
        if args.command == "list":
            for lab in labs:
                m = manifest(lab) or {}
                print(f"{lab}: {', '.join(m.get('vms', [])) or 'incomplete'} made {m.get('made', '?')} "
                      f"key {m.get('key', '?')} ({cache_dir(lab)})")
            return 0
        if args.lab and not cache_dir(args.lab).exists():
            print(f"cache: no provisioned VMs cached for lab {args.lab!r} (have: {', '.join(labs) or 'none'})",
                  file=sys.stderr)
            return 2
        for lab in [args.lab] if args.lab else labs:
            clear(lab, print)
        return 0
    except (LabError, OSError) as exc:
        print(f"cache: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

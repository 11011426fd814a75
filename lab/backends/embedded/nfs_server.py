"""A userspace NFS server (nfs-ganesha, NFSv3) for the embedded lab's `storage: nfs`.

This kernel has no NFS client or server, so the server is ganesha in a lab
host of its own, and guests reach their disks through QEMU's NFS block driver
(libnfs): real NFSv3 on the wire. rpcbind must run first in the same host, on
a private /run/rpcbind, or ganesha dies with "Cannot register NFS V3".
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from lab.backends.embedded.host import DAEMON_ENV, make_network, nsenter, port_open, start_holder
from lab.config.lab import LabConfig
from lab.errors import BackendError
from lab.runtime.state import HostState, LabState
from lab.util.process import alive, wait_until

NFS_PORT = 2049


def write_ganesha_conf(path: Path, address: str, export: Path, workdir: Path) -> None:
    # NFSv3 only (QEMU's libnfs speaks v3); over v3 clients mount the export's Path, not its Pseudo.
    path.write_text(f"""NFS_CORE_PARAM {{
    Protocols = 3;
    Bind_addr = {address};
    NLM_Port = 0;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSV4 {{ Graceless = true; RecoveryRoot = {workdir}/recovery; }}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = /export;
    Protocols = 3;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = WARN; }}
""")


def ganesha_argv(conf: Path, workdir: Path) -> list[str]:
    return ["ganesha.nfsd", "-F", "-f", str(conf), "-L", str(workdir / "ganesha.log"), "-p", str(workdir / "ganesha.pid"),
            "-N", "NIV_WARN"]


def rpcbind_argv() -> list[str]:
    return ["rpcbind", "-f", "-w"]


def start_nfs_server(config: LabConfig, state: LabState, veth: str, lab_bridge: str) -> None:
    """A third lab host running rpcbind and ganesha, exporting the lab's nfs-export over NFSv3."""
    layout = state.layout
    nfs = HostState(name="nfs", address=config.network.nfs_address, netns=f"{config.name}-nfs", veth=veth)
    state.nfs = nfs
    state.save()
    make_network(config, nfs, lab_bridge)
    hdir = layout.host_dir("nfs")
    for sub in ("run-rpcbind", "ganesha", "ganesha/recovery"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    export = layout.storage_path("nfs")
    export.mkdir(parents=True, exist_ok=True)
    write_ganesha_conf(hdir / "ganesha.conf", nfs.address, export, hdir / "ganesha")
    start_holder(nfs, binds=[(hdir / "run-rpcbind", "/run/rpcbind")])
    state.save()
    for name, argv in (("rpcbind", rpcbind_argv()), ("ganesha", ganesha_argv(hdir / "ganesha.conf", hdir / "ganesha"))):
        with open(hdir / f"{name}.stderr", "w") as stderr:
            proc = subprocess.Popen(nsenter(nfs, *argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=stderr, start_new_session=True, env=DAEMON_ENV)
        nfs.pids[name] = proc.pid  # nsenter execs the daemon: same PID
        state.save()
        if name == "rpcbind":
            wait_until((hdir / "run-rpcbind" / "rpcbind.sock").exists, 10)
    def settled() -> str | None:
        if port_open(nfs.address, NFS_PORT):
            return "serving"
        return "died" if any(not alive(p) for p in nfs.pids.values()) else None

    if wait_until(settled, 30, interval=0.1) == "serving":
        return
    err = (hdir / "ganesha.stderr").read_text().strip().splitlines()[-1:] or ["no output"]
    raise BackendError(f"nfs: ganesha did not serve NFSv3 on {nfs.address}:{NFS_PORT} ({err[0]}); "
                       f"see {hdir}/ganesha/ganesha.log")

"""A userspace NFS server (nfs-ganesha, NFSv3) for the embedded lab's `storage: nfs`.

This kernel has no NFS client or server, so the server is ganesha in a lab
host of its own, and guests reach their disks through QEMU's NFS block driver
(libnfs): real NFSv3 on the wire. rpcbind must run first in the same host, on
a private /run/rpcbind, or ganesha dies with "Cannot register NFS V3".
"""
from __future__ import annotations

from pathlib import Path

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

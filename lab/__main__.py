"""`python -m lab`: bring the lab up and down, look at it, reach its hosts."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import libvirt

from lab.backends import get_backend
from lab.config.lab import BACKENDS, LabConfig, load_lab_config
from lab.errors import LabError
from lab.preflight import FAIL, as_json, context_for, run_preflight, table
from lab.results.report import build_report, read_summary, render_comparison
from lab.runtime.lab import Lab


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _config(args) -> LabConfig:
    config = load_lab_config(args.lab_config)
    if args.lab and args.lab != config.backend:
        config = config.model_copy(update={"backend": args.lab})
    return config


def cmd_up(args) -> int:
    # LAB_RUN_ID: the pytest run that follows owns the lab and takes it down at its end.
    get_backend(_config(args)).up(_progress, owner_run=os.environ.get("LAB_RUN_ID", ""))
    return 0


def cmd_down(args) -> int:
    get_backend(_config(args)).down(_progress)
    return 0


def cmd_status(args) -> int:
    status = get_backend(_config(args)).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0 if status.get("up") else 1
    if not status.get("up"):
        print(f"lab {status['name']}: down")
        return 1
    print(f"lab {status['name']} ({status['backend']}): up")
    print(f"  accelerator: {status['accelerator']} - {status['accelerator_reason']}")
    nfs = status["storage"].get("nfs_server")
    print(f"  storage:     {status['storage']['mode']} at {status['storage']['path']}"
          + (f" (NFSv3 server {nfs}, nfs-ganesha)" if nfs else ""))
    print(f"  runner:      {status['runner_address']}")
    for h in status["hosts"]:
        versions = (f"stack {h.get('stack', {}).get('name', 'system')}: libvirt {h.get('libvirt_version', '?')}, "
                    f"QEMU {h.get('qemu_version', '?')}")
        print(f"  {h['name']:<6} {h['address']:<15} {versions}  uuid {h['host_uuid']}")
        print(f"         {h['libvirt_uri']}")
    return 0


def cmd_ssh(args) -> int:

    host = Lab.load(_config(args)).host(args.host)
    argv = host.ssh_argv(" ".join(args.command) if args.command else None)
    if not args.command:
        argv.insert(1, "-t")
    os.execvp(argv[0], argv)
    return 1  # not reached


def cmd_guest_list(args) -> int:

    lab = Lab.load(_config(args))

    rows = []
    for host in lab.hosts:
        for dom in host.connect().listAllDomains():
            state = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                     libvirt.VIR_DOMAIN_SHUTOFF: "shut off"}.get(dom.state()[0], str(dom.state()[0]))
            rows.append((host.name, dom.name(), state, "persistent" if dom.isPersistent() else "transient"))
    if not rows:
        print("no guests")
    for row in rows:
        print("{:<6} {:<32} {:<9} {}".format(*row))
    return 0


def cmd_doctor(args) -> int:
    lab = Lab.load(_config(args))
    expected = {}
    if args.max_downtime is not None:
        expected["max_downtime_ms"] = args.max_downtime
    if args.bandwidth is not None:
        expected["bandwidth_mibs"] = args.bandwidth
    ctx = context_for(lab, args.src, args.dst, args.guest, **expected)
    start = time.monotonic()
    results = run_preflight(ctx, args.check or None)
    if args.json:
        print(as_json(results))
    else:
        print(f"preflight {ctx.src.name} -> {ctx.dst.name}" + (f", guest {args.guest}" if args.guest else "") +
              f" ({time.monotonic() - start:.1f} s)")
        print(table(results))
    return 1 if any(r.status == FAIL for r in results) else 0


def cmd_report(args) -> int:
    index = build_report(args.run_dir)
    print(index)
    if args.against:
        print(render_comparison(read_summary(args.against), read_summary(args.run_dir), args.run_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    parser.add_argument("--lab-config", metavar="PATH", help="lab.yaml to use (default: $LAB_CONFIG or ./lab.yaml)")
    parser.add_argument("--lab", choices=BACKENDS, help="backend, overriding lab.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="bring the lab up (idempotent)").set_defaults(func=cmd_up)
    sub.add_parser("down", help="remove everything the lab made (idempotent)").set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="what is up, accelerator, hosts and versions")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    ssh = sub.add_parser("ssh", help="ssh to a lab host")
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=cmd_ssh)
    doctor = sub.add_parser("doctor", help="preflight checklist for a live migration; exit 1 on any fail")
    doctor.add_argument("--guest", help="the guest to migrate (VM-state, storage and parameter checks need it)")
    doctor.add_argument("--src", help="source host (default: the first)")
    doctor.add_argument("--dst", help="destination host (default: the other)")
    doctor.add_argument("--max-downtime", type=int, metavar="MS", help="expected max downtime, read back and compared")
    doctor.add_argument("--bandwidth", type=int, metavar="MIBS", help="expected bandwidth limit, read back and compared")
    doctor.add_argument("--check", action="append", help="run only this check (repeatable)")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)
    guest = sub.add_parser("guest", help="guests on the lab's hosts")
    guest_sub = guest.add_subparsers(dest="guest_command", required=True)
    guest_sub.add_parser("list").set_defaults(func=cmd_guest_list)
    report = sub.add_parser("report", help="(re)write a run's HTML report: RUN_DIR/index.html")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run's report folder, e.g. reports/<run-id>")
    report.add_argument("--against", metavar="BASE_RUN_DIR", help="also write RUN_DIR/compare.html against this run")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lab status | head` ends quietly
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab: interrupted; `python -m lab down` removes whatever was made", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

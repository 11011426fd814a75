"""`python -m lab`: bring the lab up and down, look at it, reach its hosts."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import libvirt

from lab.backends import get_backend
from lab.config.lab import BACKENDS, LabConfig, load_lab_config
from lab.config.thresholds import load_thresholds
from lab.errors import LabError
from lab.hotpatch.doctor.command import add_doctor_parser
from lab.bisect.runner import git_candidates, run_bisect, series_stacks, text as bisect_text
from lab.migration.calibrate import cached_for_lab, calibrated
from lab.mutants.corpus import CORPUS, load_corpus
from lab.mutants.runner import run_mutants, table
from lab.preflight import as_json, context_for
from lab.preflight.doctor import check_all_pairs, check_pair, expected_from_flags, plan_from_flags, summary
from lab.results.gate import gate, markdown
from lab.results.gate_run import DEFAULT_SELECTION, run_gate
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
    vagrant = status.get("vagrant") or {}
    for line in vagrant.get("inner_lines", []):  # the figures behind the Vagrant lab's choice
        print(f"    measured {line}")
    if vagrant:
        made = f"started from {vagrant['resumed_from']}" if vagrant.get("resumed_from") else "made and provisioned"
        timings = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in vagrant.get("timings", {}).items())
        print(f"  vagrant:     driver {vagrant['driver']}, VMs {made}; {timings}")
    nfs = status["storage"].get("nfs_server")
    print(f"  storage:     {status['storage']['mode']} at {status['storage']['path']}"
          + (f" (NFSv3 server {nfs}, nfs-ganesha)" if nfs else ""))
    print(f"  runner:      {status['runner_address']}")
    for h in status["hosts"]:
        versions = (f"stack {h.get('stack', {}).get('name', 'system')}: libvirt {h.get('libvirt_version', '?')}, "
                    f"QEMU {h.get('qemu_version', '?')}")
        print(f"  {h['name']:<6} {h['address']:<15} {versions}  uuid {h['host_uuid']}")
        print(f"         {h['libvirt_uri']}")
    for cal in cached_for_lab(status["name"]):  # what the model's limits follow from (lab/calibration/)
        pair = " -> ".join(name for name, _ in cal.key.get("pair", []))
        print(f"  calibration {pair} (measured {cal.measured_at}):")
        for line in cal.lines():
            print(f"    {line}")
    return 0


def cmd_calibrate(args) -> int:
    """Measure (or show the cached) calibration of the lab's first host pair, which the model's limits follow from."""
    config = _config(args)
    get_backend(config).up(_progress, owner_run=os.environ.get("LAB_RUN_ID", ""))
    lab = Lab.load(config)
    cal = calibrated(lab, lab.hosts[0], lab.hosts[1], load_thresholds(args.thresholds).tolerance, _progress,
                     again=args.again)
    print(f"calibration {lab.hosts[0].name} -> {lab.hosts[1].name} (measured {cal.measured_at}):")
    for line in cal.lines():
        print(f"  {line}")
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
    # Flags first: a bad value is one line before anything is asked of the lab.
    plan = plan_from_flags(args.memory, args.vcpus, args.disk, args.cpu_model, args.machine)
    expected = expected_from_flags(args.max_downtime, args.bandwidth)
    if args.all_pairs and (args.guest or args.src or args.dst):
        raise LabError("--all-pairs checks every pair of lab.yaml for the planned guest: drop --guest, --src and --dst")
    lab = Lab.load(_config(args))
    if args.all_pairs:
        reports = check_all_pairs(lab, args.check or None, plan, **expected)
    else:
        reports = [check_pair(context_for(lab, args.src, args.dst, args.guest, plan, **expected), args.check or None)]
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2) if args.all_pairs else as_json(reports[0].results))
    else:
        print("\n\n".join(r.text() for r in reports))
        if args.all_pairs:
            print(summary(reports))
    return 1 if any(r.failed for r in reports) else 0


def cmd_report(args) -> int:
    index = build_report(args.run_dir)
    print(index)
    if args.against:
        print(render_comparison(read_summary(args.against), read_summary(args.run_dir), args.run_dir))
    return 0


def cmd_compare(args) -> int:
    """The release gate: exit 1 on any regression, 3 when a probe had too few samples to judge, else 0."""
    out = Path(args.out or args.candidate)
    result = gate(Path(args.baseline), Path(args.candidate), out)
    html = render_comparison(read_summary(args.baseline), read_summary(args.candidate), out)
    print(markdown(result))
    print(f"written: {out / 'gate.json'}, {out / 'gate.md'}, {html}")
    return 1 if result["regressions"] else 3 if result["undecided"] else 0


def cmd_mutants_run(args) -> int:
    """Exit 0 when no false alarm and nothing undecided; 1 on a false alarm or a missed mutant; 3 undecided."""
    selection = [a for a in args.pytest_args if a != "--"]
    out = Path(args.out or f"reports/mutants-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_mutants(load_corpus(Path(args.corpus) if args.corpus else CORPUS, args.only), selection, out,
                         _progress, clean=Path(args.clean) if args.clean else None, resume=args.resume,
                         again=tuple(args.again or ()))
    print(table(result))
    print(f"written: {out / 'mutants.md'}, {out / 'mutants.json'}")
    s = result["summary"]
    return 1 if s["false_alarms"] or s["missed"] else 3 if s["undecided"] else 0


def cmd_bisect(args) -> int:
    """Exit 0 when the first bad candidate was found, 3 when the bisect could not decide."""
    selection = [a for a in args.pytest_args if a != "--"]
    lab_file = Path(args.lab_config or "lab.yaml")
    out = Path(args.out or f"reports/bisect-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.series:
        if not args.stack:
            raise LabError("bisect --series: name the build stack of the lab file it applies to (--stack NAME)")
        stacks, labels = series_stacks(lab_file, args.stack, [Path(p) for p in args.series])
    else:
        if not (args.good and args.bad):
            raise LabError("bisect: give --good REV and --bad REV (a git tree's commits), or --stack and --series")
        tree = Path(args.tree or ".").resolve()
        shas, labels = git_candidates(tree, args.good, args.bad)
        stacks = [{"source": "git", "tree": str(tree), "commit": sha} for sha in shas]
    outcome = run_bisect(stacks, labels, lab_file, args.host, selection, out, _progress, confirm=args.confirm)
    print(bisect_text(outcome, selection))
    print(f"written: {out / 'bisect.md'}, {out / 'bisect.json'}")
    return 0 if outcome.state == "found" else 3


def cmd_gate(args) -> int:
    """Both sides run, then compared: compare's exit status (2 when a side could not run)."""
    lab_file = Path(args.lab_config or "labs/gate.yaml")
    out = Path(args.out or f"reports/gate-{time.strftime('%Y%m%d-%H%M%S')}")
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    return run_gate(args.baseline, args.candidate, lab_file, out, pytest_args, _progress)


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
    calibrate = sub.add_parser("calibrate", help="measure what the model's limits follow from (cached per host pair "
                                                 "and stack): throughput, idle switchover, the guest's dirty rate")
    calibrate.add_argument("--again", action="store_true", help="measure anew, even if a calibration is cached")
    calibrate.add_argument("--thresholds", metavar="PATH", help="thresholds file whose tolerances apply")
    calibrate.set_defaults(func=cmd_calibrate)
    ssh = sub.add_parser("ssh", help="ssh to a lab host")
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=cmd_ssh)
    doctor = sub.add_parser("doctor", help="preflight checklist for a live migration; exit 1 on any fail",
                            description="Without --guest: the pair is checked for a planned guest, the lab's "
                                        "(lab.yaml guest:) changed by --memory, --vcpus, --disk, --cpu-model, --machine.")
    doctor.add_argument("--guest", help="an existing guest to migrate (only the VM-state checks need one)")
    doctor.add_argument("--src", help="source host (default: the first)")
    doctor.add_argument("--dst", help="destination host (default: the source's pair partner)")
    doctor.add_argument("--all-pairs", action="store_true", help="check every host pair of lab.yaml; one table each")
    doctor.add_argument("--memory", metavar="SIZE", help="planned guest memory (MiB, or 4G, 1T)")
    doctor.add_argument("--vcpus", metavar="N", help="planned guest vCPUs")
    doctor.add_argument("--disk", metavar="SIZE", help="planned guest disk size (MiB, or 20G)")
    doctor.add_argument("--cpu-model", metavar="MODEL", help="planned guest CPU model (libvirt's name, e.g. qemu64)")
    doctor.add_argument("--machine", metavar="TYPE", help="planned guest machine type (e.g. pc, q35)")
    doctor.add_argument("--max-downtime", metavar="MS", help="configured max downtime: read back (guest) or "
                        "given to each host's QEMU (planned guest)")
    doctor.add_argument("--bandwidth", metavar="MIBS", help="configured bandwidth limit, 0 unlimited: read back "
                        "(guest) or given to each QEMU and measured on the link (planned guest)")
    doctor.add_argument("--check", action="append", help="run only this check (repeatable)")
    doctor.add_argument("--json", action="store_true")
    # A flag without its value is bad input like any other: one line, not argparse's usage block.
    doctor.error = lambda message: doctor.exit(2, f"lab: error: doctor: {message} (`python -m lab doctor --help`)\n")
    doctor.set_defaults(func=cmd_doctor)
    guest = sub.add_parser("guest", help="guests on the lab's hosts")
    guest_sub = guest.add_subparsers(dest="guest_command", required=True)
    guest_sub.add_parser("list").set_defaults(func=cmd_guest_list)
    report = sub.add_parser("report", help="(re)write a run's HTML report: RUN_DIR/index.html")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run's report folder, e.g. reports/<run-id>")
    report.add_argument("--against", metavar="BASE_RUN_DIR", help="also write RUN_DIR/compare.html against this run")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser("compare", help="release gate: a candidate run against a baseline; exit 1 on a regression")
    compare.add_argument("baseline", metavar="BASELINE_RUN", help="the baseline run's folder, e.g. reports/<run-id>")
    compare.add_argument("candidate", metavar="CANDIDATE_RUN", help="the candidate run's folder")
    compare.add_argument("--out", metavar="DIR", help="where gate.json, gate.md and compare.html go (default: the candidate's)")
    compare.set_defaults(func=cmd_compare)
    hotpatch = sub.add_parser("hotpatch", help="hot patches: `hotpatch doctor PATCH` checks one before it is built")
    add_doctor_parser(hotpatch.add_subparsers(dest="hotpatch_command", required=True))
    gate_cmd = sub.add_parser("gate", help="run the same selection on a baseline and a candidate stack, then compare "
                                           "(exit 1 on a regression); --lab-config defaults to labs/gate.yaml")
    gate_cmd.add_argument("--baseline", required=True, metavar="STACK", help="a stack of the lab file, or system")
    gate_cmd.add_argument("--candidate", required=True, metavar="STACK", help="a stack of the lab file")
    gate_cmd.add_argument("--out", metavar="DIR", help="where both runs and the comparison go (default: reports/gate-TIME)")
    gate_cmd.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                          help=f"the selection (default: {' '.join(DEFAULT_SELECTION)})")
    gate_cmd.set_defaults(func=cmd_gate)
    mutants = sub.add_parser("mutants", help="QEMU built with known defects (suites/mutants/): what the suites catch")
    mutants_sub = mutants.add_subparsers(dest="mutants_command", required=True)
    mutants_run = mutants_sub.add_parser("run", help="build each mutant as a stack, run the selection on it, count "
                                                     "caught / missed / excused / undecided against the clean build")
    mutants_run.add_argument("--only", nargs="+", metavar="ID", help="these mutants only (ids of their headers)")
    mutants_run.add_argument("--corpus", metavar="DIR", help="another folder of mutant patches")
    mutants_run.add_argument("--clean", metavar="RUN_DIR", help="an earlier run of the clean build with the same "
                                                                "selection, instead of running it again")
    mutants_run.add_argument("--out", metavar="DIR", help="where the runs and mutants.md go (default reports/mutants-TIME)")
    mutants_run.add_argument("--resume", action="store_true", help="keep the decided outcomes of an earlier, cut-off "
                                                                   "run into --out with the same selection; run the rest")
    mutants_run.add_argument("--again", nargs="+", metavar="ID", help="with --resume: run these anew although "
                                                                        "decided (after a harness fix)")
    mutants_run.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                             help="the pytest selection each mutant is run with")
    mutants_run.set_defaults(func=cmd_mutants_run)
    bis = sub.add_parser("bisect", help="from a regression to the commit (or the patch of a series) that caused it")
    bis.add_argument("--good", metavar="REV", help="a commit of the tree without the regression")
    bis.add_argument("--bad", metavar="REV", help="a commit of the tree with it")
    bis.add_argument("--tree", metavar="PATH", help="the QEMU git working tree (default: the current directory)")
    bis.add_argument("--stack", metavar="NAME", help="series form: the lab file's build stack the series applies to")
    bis.add_argument("--series", nargs="+", metavar="PATCH", help="series form: the patches, in order (good: none "
                                                                  "applied, bad: all)")
    bis.add_argument("--host", metavar="NAME", help="put only this host on each step's stack (rolling upgrade)")
    bis.add_argument("--confirm", type=int, default=2, metavar="N",
                     help="runs per step that must all agree (default 2); runs that disagree make the step undecided")
    bis.add_argument("--out", metavar="DIR", help="where the steps and bisect.md go (default reports/bisect-TIME)")
    bis.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                     help="the pytest selection each step runs")
    bis.set_defaults(func=cmd_bisect)
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

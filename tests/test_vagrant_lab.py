"""The Vagrant lab end to end (marked vagrant + slow; `make vagrant-test`): builds the box if needed,
brings the lab up under whatever the machine has (TCG here), checks the playbook is idempotent, runs
the preflight suite and the precopy-idle live migration on it, and takes it down, checking nothing is
left. Its settings and pieces are tested in test_vagrant_settings.py and test_vagrant_box.py."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab.backends.vagrant import box as boxmod
from lab.backends.vagrant.render import machines
from lab.config.lab import parse_lab_config
from lab.config.vagrant import check_lab
from tests.vagrant_tools import REPO, TCG_YAML, read_or_empty, run_lab, vagrant_with_libvirt, virsh


# -- end to end (make vagrant-test) -----------------------------------------------------------------


def _nested_check_on(config) -> list[str]:
    """The nested check on the hypervisor VMs, for a lab that needs KVM inside them: it must agree with
    what the VMs show, and fail for real once the destination's KVM module is unloaded (then restored).
    Runs after the suites, when no L2 guest holds /dev/kvm."""
    from lab.preflight import FAIL, PASS, context_for, nested_need, run_preflight
    from lab.runtime.lab import Lab

    lab = Lab.load(config)
    need = nested_need(lab) or "lab.yaml accelerator: kvm"

    def nested():
        (result,) = run_preflight(dataclasses.replace(context_for(lab), nested_required=need), ["nested"])
        print(f"nested: {result.line()}")
        return result

    dst = lab.hosts[1]
    modules = dst.run("cd /sys/module && ls -d kvm_amd kvm_intel 2>/dev/null", check=False).stdout.split()
    first = nested()
    if not modules:  # the VMs show no vmx/svm: nesting is off, the check must say so
        ok = first.status == FAIL and "/dev/kvm no" in first.seen
        return [] if ok else [f"nested should fail on host VMs without KVM: {first.line()}"]
    problems = [] if first.status == PASS and "nested virtualization on" in first.seen else \
        [f"nested should pass: {dst.name} has {modules} loaded: {first.line()}"]
    dst.run(f"modprobe -r {modules[0]}")
    try:
        broken = nested()
        if broken.status != FAIL or "/dev/kvm no" not in broken.seen or f"kvm_amd on {dst.name}" not in broken.remedy:
            problems.append(f"nested should fail with {modules[0]} unloaded on {dst.name}: {broken.line()}")
    finally:
        dst.run(f"modprobe {modules[0]}")
    again = nested()
    if again.status != PASS:
        problems.append(f"nested should pass again after modprobe {modules[0]}: {again.line()}")
    return problems


def _clock_check_on(config) -> list[str]:
    """clock-sync passes on the lab as provisioned, fails once hv2's chrony is stopped and its clock stepped
    5 s ahead, and passes again once chrony has brought it back."""
    from lab.backends.vagrant.timeserver import wait_for_clock
    from lab.preflight import FAIL, PASS, context_for, run_preflight
    from lab.runtime.lab import Lab

    lab = Lab.load(config)
    dst = lab.hosts[1]

    def clock():
        (result,) = run_preflight(context_for(lab), ["clock-sync"])
        print(f"clock-sync: {result.line()}")
        return result

    problems = []
    if (first := clock()).status != PASS or "reference " + config.network.runner_address not in first.seen:
        problems.append(f"clock-sync should pass on the provisioned lab: {first.line()}")
    dst.run("systemctl stop chrony && date -s '+5 seconds' >/dev/null")
    try:
        broken = clock()
        if broken.status != FAIL or f"{dst.name}'s clock is at least" not in broken.seen or "ahead of" not in broken.seen:
            problems.append(f"clock-sync should fail with {dst.name} 5 s ahead: {broken.line()}")
    finally:
        dst.run("systemctl start chrony")
        wait_for_clock(dst, config.network.runner_address)
    if (again := clock()).status != PASS:
        problems.append(f"clock-sync should pass again once chrony is back: {again.line()}")
    return problems


@pytest.mark.vagrant
@pytest.mark.slow
def test_vagrant_lab_end_to_end(record_property, tmp_path):
    """Box (built if missing), `lab up`, idempotent playbook, preflight + live migration suites, `lab down`."""
    why = vagrant_with_libvirt()
    if why:
        pytest.skip(why)
    if not shutil.which("ansible-playbook"):
        pytest.skip("ansible-playbook is not installed (apt-get install ansible-core ansible)")
    if os.geteuid() != 0:
        pytest.skip("the Vagrant lab needs root (libvirt system connection, box build)")
    config_path = Path(os.environ.get("LAB_VAGRANT_CONFIG", TCG_YAML))
    # The repo's limits, as on every lab: the model's figures for this lab's own calibration (measured at the
    # suite's start and cached), not numbers picked for it by hand.
    thresholds = Path(os.environ.get("LAB_VAGRANT_THRESHOLDS", REPO / "thresholds.yaml"))
    config = parse_lab_config(yaml.safe_load(config_path.read_text()), str(config_path))
    spec = check_lab(config)
    report = Path(os.environ.get("LAB_VAGRANT_TIMINGS", tmp_path / "timings.json"))
    # One entry per run, appended: the steps' seconds with the machine's load beside them (a shared
    # runner's figures mean little without it). Speed goals are read from here, never asserted.
    try:
        runs = json.loads(report.read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        runs = []
    timings: dict[str, float] = {}
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "lab_config": str(config_path),
             "box_present": not (spec.box_url and spec.box_url.startswith("/") and not Path(spec.box_url).exists()),
             "load_at_start": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), "steps": timings}
    runs.append(entry)

    def write_report() -> None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"runs": runs}, indent=2))

    def done(step: str, seconds: float) -> None:
        timings[step] = round(seconds, 1)
        entry["load_at_" + step] = [round(x, 2) for x in os.getloadavg()]
        record_property(f"{step}_s", timings[step])
        write_report()

    run_started = time.monotonic()
    if spec.box_url and spec.box_url.startswith("/") and not Path(spec.box_url).exists():
        started = time.monotonic()
        built = boxmod.build(spec.box, Path(spec.box_url).parent)
        assert built.box == Path(spec.box_url), "vagrant.box_url must be where `box build --name BOX` puts it"
        done("box_build", time.monotonic() - started)

    failures: list[str] = []  # collected, so that `down` and its checks always run and every failure shows
    try:
        proc, took = run_lab("up", config=config_path)
        logs = report.parent / "vagrant-last-run"  # the last run's `lab up` and playbook output, to read steps from
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "lab-up.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"lab up failed:\n{proc.stderr[-4000:]}"
        done("lab_up", took)
        proc, _ = run_lab("status", "--json", config=config_path)
        status = json.loads(proc.stdout)
        assert status["up"] and status["backend"] == "vagrant"
        assert [h["name"] for h in status["hosts"]] == [h.name for h in config.hosts]
        assert status["vagrant"]["vms"] and all(s == "running" for s in status["vagrant"]["vms"].values())
        for step, seconds in status["vagrant"]["timings"].items():
            done(f"up_{step.removesuffix('_s')}", seconds)
        entry["up_mode"] = "warm" if status["vagrant"]["resumed_from"] else "fresh"
        entry["accelerator"], entry["inner_figures"] = status["accelerator"], status["vagrant"]["inner"]
        write_report()
        # The guests' accelerator was measured inside the VMs (now or when the cached VMs were made).
        # The fill speed the agent's waits follow was measured in this boot, at the suites' size.
        fill = entry["fill_check"] = status["vagrant"]["fill_check"]
        write_report()
        assert fill.get("mib") == 32 and fill.get("accel") == status["accelerator"], status
        assert fill["fill_mibs"] > 0 and status["vagrant"]["fill_mibs"] == fill["fill_mibs"], status

        # The playbook again: a second run changes nothing.
        from lab.backends.vagrant.driver import VagrantLab

        work = Path(status["vagrant"]["work_dir"])
        started = time.monotonic()
        last = machines(config, spec)[-1].name  # the machine that carries the ansible provisioner
        lines = list(VagrantLab(work, work / "settings.json").provision_lines(last))
        (logs / "playbook-again.log").write_text("\n".join(lines) + "\n")
        recap = [line for line in lines if " : ok=" in line]
        done("provision_again", time.monotonic() - started)
        if not recap:
            failures.append("no PLAY RECAP from the second provisioning run")
        for line in recap:
            if not (re.search(r"\bchanged=0\b", line) and re.search(r"\bfailed=0\b", line)):
                failures.append(f"playbook not idempotent: {line.strip()}")

        # -m "not timing": the suites' speed budgets are the embedded lab's (doctor within 10 s; 22 s here
        # on TCG VMs); the Vagrant lab's speed goes to the timings file, not into verdicts.
        for name, args in (("preflight_suite", ["suites/preflight", "-m", "not timing"]),
                           ("live_migration_precopy_idle", ["suites/live_migration", "-k", "precopy-idle",
                                                            "--repeat", "1", "--thresholds", str(thresholds)])):
            started = time.monotonic()
            run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", *args,
                                  "--lab-config", str(config_path), "--keep-lab"], cwd=REPO, capture_output=True,
                                 text=True, timeout=3600)
            done(name, time.monotonic() - started)
            summary = (run.stdout.strip().splitlines() or ["no output"])[-1]
            record_property(f"{name}_summary", summary)
            if run.returncode != 0 or " passed" not in summary:
                errors = [line for line in run.stdout.splitlines() if line.startswith(("E   ", "FAILED ", "ERROR "))][:4]
                failures.append(f"{name}: {summary} {' | '.join(e.strip() for e in errors)}")
        failures += _nested_check_on(config)
        failures += _clock_check_on(config)
    except BaseException as exc:
        entry["result"] = f"failed: {str(exc)[:300]}"
        raise
    finally:
        before = json.loads((Path("/var/lib/kvm-acceptance-lab") / config.name / "state.json").read_text()) \
            if (Path("/var/lib/kvm-acceptance-lab") / config.name / "state.json").exists() else {}
        proc, took = run_lab("down", config=config_path)
        done("lab_down", took)
        entry["total"] = round(time.monotonic() - run_started, 1)
        entry["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        entry.setdefault("result", ("failed: " + "; ".join(failures))[:400] if failures else "failed: after down")
        write_report()
    assert proc.returncode == 0, proc.stderr[-2000:]
    prefix = f"{config.name}-"
    assert not [d for d in virsh("list", "--all", "--name").split() if d.startswith(prefix)]
    assert not [n for n in virsh("net-list", "--all", "--name").split() if n.startswith(prefix)]
    assert config.name not in virsh("pool-list", "--all", "--name").split()
    assert not (Path("/var/lib/kvm-acceptance-lab") / config.name).exists()
    assert not (Path("/var/lib/libvirt/images") / config.name).exists(), "the lab's storage pool directory is left"
    dnsmasq = [p for p in Path("/proc").glob("[0-9]*/cmdline") if f"dnsmasq/{prefix}".encode() in read_or_empty(p)]
    assert not dnsmasq, f"dnsmasq of the lab's networks still running: {dnsmasq}"
    for daemon, pid in ((before.get("vagrant") or {}).get("daemons") or {}).items():
        assert not Path(f"/proc/{pid}").exists() or daemon not in Path(f"/proc/{pid}/cmdline").read_text(), \
            f"the root {daemon} this lab started (PID {pid}) is still running"
    if spec.keep_provisioned and spec.provision:  # a cache, kept outside the checkout and the lab's own dirs
        from lab.backends.vagrant import cache

        assert cache.manifest(config.name), f"no provisioned-VM cache kept in {cache.cache_dir(config.name)}"
        assert not cache.cache_dir(config.name).is_relative_to(REPO)
    assert not failures, "\n".join(failures)
    entry["result"] = "passed"
    write_report()

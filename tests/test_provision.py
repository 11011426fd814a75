"""The provisioning playbook (provision/site.yml): syntax, lint, structure, and that the variables
the Vagrant lab passes are the ones the roles declare.

Idempotence on real machines (a second run reports changed=0) is checked end to end by
tests/test_vagrant_lab.py::test_vagrant_lab_end_to_end (make vagrant-test).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.backends.vagrant.render import playbook_vars, settings_document

REPO = Path(__file__).resolve().parent.parent
PROVISION = REPO / "provision"
PLAYBOOK = PROVISION / "site.yml"
ROLES = ("common", "stack", "hypervisor", "nfs_server", "libcareplus")
INVENTORIES = sorted((PROVISION / "inventory").glob("*.yml"))


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed ({package})")
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(PROVISION / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": "/tmp/.ansible-tmp", "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible-tmp"}


@pytest.mark.parametrize("inventory", INVENTORIES, ids=[p.stem for p in INVENTORIES])
def test_playbook_syntax_check(inventory):
    _need("ansible-playbook", "apt-get install ansible-core ansible")
    proc = subprocess.run(["ansible-playbook", "--syntax-check", "-i", str(inventory), str(PLAYBOOK)],
                          capture_output=True, text=True, env=_env(), cwd=PROVISION)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: " in proc.stdout


def test_ansible_lint_clean():
    _need("ansible-lint", "apt-get install ansible-lint")
    proc = subprocess.run(["ansible-lint", "--nocolor", "--profile", "production", "site.yml"],
                          capture_output=True, text=True, env=_env(), cwd=PROVISION)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_roles_and_plays():
    plays = yaml.safe_load(PLAYBOOK.read_text())
    used = {r["role"] if isinstance(r, dict) else r for play in plays for r in play.get("roles", [])}
    assert used == set(ROLES)
    for role in ROLES:
        assert (PROVISION / "roles" / role / "tasks" / "main.yml").is_file()
        assert (PROVISION / "roles" / role / "meta" / "main.yml").is_file()
    hosts = {play["hosts"] for play in plays}
    assert {"hypervisors", "nfs_servers"} <= {h for spec in hosts for h in spec.split(":")}


def _role_defaults() -> dict:
    names: dict = {}
    for defaults in (PROVISION / "roles").glob("*/defaults/main.yml"):
        names.update(yaml.safe_load(defaults.read_text()) or {})
    return names


def test_vagrant_variables_are_the_roles_variables():
    """A variable the lab passes that no role declares is a typo the playbook would silently ignore."""
    from tests.vagrant_tools import vagrant_config
    from lab.config.vagrant import check_lab

    config = vagrant_config()
    spec = check_lab(config)
    declared = _role_defaults()
    passed = playbook_vars(config, spec, Path("/var/lib/kvm-acceptance-lab/kvmvag"), "ssh-ed25519 K")
    assert set(passed) - set(declared) == set()
    doc = settings_document(config, spec, driver="qemu", lab_dir=Path("/x"), work_dir=Path("/y"), public_key="k")
    for host_vars in doc["provision"]["host_vars"].values():
        # Ansible's own behavioural variables (ansible_python_interpreter for the Debian boxes) are not roles'.
        assert {name for name in set(host_vars) - set(declared) if not name.startswith("ansible_")} == set()


def test_every_used_variable_has_a_default():
    """Real-host inventories only set what differs: everything else has a default in some role."""
    declared = set(_role_defaults())
    # Facts, magic variables and loop/registered names are not ours to declare.
    builtin = {"item", "inventory_hostname", "hostvars", "groups", "ansible_managed", "omit", "h", "hv",
               "nic_facts", "lab_nic", "ansible_facts"}
    used = set()
    for path in (PROVISION / "roles").rglob("*"):
        if path.suffix in (".yml", ".j2") and path.is_file():
            for expr in re.findall(r"{{(.*?)}}|{%(.*?)%}", path.read_text()):
                for word in re.findall(r"\b([a-z_][a-z0-9_]*)\b", " ".join(expr)):
                    if word.startswith(("lab_", "libvirt_", "qemu_", "nfs_", "hypervisor_", "libcareplus_", "nested_")):
                        used.add(word)
    whens = set()
    for path in (PROVISION / "roles").rglob("tasks/main.yml"):
        for task in yaml.safe_load(path.read_text()) or []:
            conds = task.get("when", [])
            for cond in conds if isinstance(conds, list) else [conds]:
                whens.update(w for w in re.findall(r"\b([a-z_][a-z0-9_]*)\b", str(cond))
                             if w.startswith(("lab_", "libvirt_", "nfs_", "nested_", "libcareplus_")))
    registered = {task["register"] for path in (PROVISION / "roles").rglob("tasks/main.yml")
                  for task in yaml.safe_load(path.read_text()) or [] if "register" in task}
    missing = (used | whens) - declared - builtin - registered
    assert missing == set(), f"used without a default: {sorted(missing)}"

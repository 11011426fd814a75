"""`python -m lab.stacks`: fetch a lab.yaml's stacks ahead of `lab up`, or list the cached trees.

    python -m lab.stacks [--lab-config PATH] fetch [NAME ...]   # default: every stack the hosts run
    python -m lab.stacks list
    python -m lab.stacks [--lab-config PATH] pins          # the playbook's lab_stack host vars (static hosts)
"""
from __future__ import annotations

import argparse
import sys
import time

import yaml

from lab.config.lab import load_lab_config
from lab.config.stacks import stack_spec
from lab.errors import ConfigError, LabError
from lab.stacks.archive import COMPONENTS
from lab.stacks.build import COMPONENT as BUILD
from lab.stacks.cache import StackCache
from lab.stacks.pins import playbook_stacks
from lab.stacks.resolve import ensure_stack


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cmd_fetch(args) -> int:
    config = load_lab_config(args.lab_config)
    names = args.names or list(dict.fromkeys(h.stack for h in config.hosts))
    for name in names:
        if name != "system" and name not in config.stacks:
            raise ConfigError(f"{config.source}: stacks: unknown stack {name!r} "
                              f"(stacks: {', '.join(['system', *config.stacks])})")
        record = ensure_stack(name, stack_spec(name, config.stacks), _progress)
        print(f"{record.name}: QEMU {record.qemu}, libvirt {record.libvirt} ({record.origin})")
    return 0


def cmd_pins(args) -> int:
    """Each host's `lab_stack` (provision/roles/stack) as inventory YAML, versions resolved in the archive."""
    config = load_lab_config(args.lab_config)
    hosts = playbook_stacks(config, _progress)
    if not hosts:
        print(f"# {config.source}: every host runs stack system; the playbook installs nothing extra")
    else:
        print(yaml.safe_dump({"all": {"hosts": {name: {"lab_stack": stack} for name, stack in hosts.items()}}},
                             sort_keys=False, width=120), end="")
    return 0


def cmd_list(_args) -> int:
    cache = StackCache()
    rows = [(c, e.manifest["version"], e.manifest.get("suite", ""), str(e.dir))
            for c in (*COMPONENTS, BUILD) for e in cache.entries(c)]
    for row in rows:
        print("{:<10} {:<32} {:<20} {}".format(*row))
    if not rows:
        print(f"no stacks cached in {cache.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.stacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab-config", metavar="PATH", help="lab.yaml to use (default: $LAB_CONFIG or ./lab.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch and unpack stacks into the cache")
    fetch.add_argument("names", nargs="*", metavar="NAME")
    fetch.set_defaults(func=cmd_fetch)
    sub.add_parser("list", help="cached trees").set_defaults(func=cmd_list)
    sub.add_parser("pins", help="the playbook's lab_stack host vars, as inventory YAML").set_defaults(func=cmd_pins)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"lab.stacks: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab.stacks: interrupted; nothing half-installed is left in the cache", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""An archive stack as the playbook installs it on a real or Vagrant host: exact package pins.

The embedded lab unpacks a stack into a tree; a host of its own gets it installed by
provision/site.yml (role `stack`), from the same suite and at the same exact versions, which the
runner resolves once here (the private apt index of archive.py: nothing on this machine changes).
The result is the role's `lab_stack` variable:

    lab_stack: {name: bookworm-backports, suite: bookworm-backports, mirror: http://deb.debian.org/debian,
                qemu: 1:10.0.2+ds-2+deb13u1~bpo12+1, libvirt: 11.3.0-2~bpo12+1,
                packages: [qemu-system-x86=1:10.0.2+ds-2+deb13u1~bpo12+1, ..., libvirt-daemon-system=11.3.0-2~bpo12+1]}
"""
from __future__ import annotations

from typing import Callable

from lab.config.stacks import SYSTEM, StackSpec
from lab.errors import StackError
from lab.stacks.archive import COMPONENTS, read_suite, resolve
from lab.stacks.cache import StackCache

# What a host needs of each component beyond what the embedded tree takes: the tools and the
# daemon's systemd units and default config, from the same source package (so at the same version).
HOST_EXTRA = {"qemu": ("qemu-utils",), "libvirt": ("libvirt-daemon-system",)}


def playbook_stack(name: str, spec: StackSpec, progress: Callable[[str], None],
                   cache: StackCache | None = None) -> dict:
    """The role's `lab_stack` for one archive stack, every package pinned to the version the request names."""
    if spec.source != "archive":
        raise StackError(f"stacks.{name}: source {spec.source} cannot be installed by the playbook; "
                         "name an archive stack (suite and versions) or use backend: embedded")
    cache = cache or StackCache()
    suite = spec.archive_suite
    with cache.locked(progress):
        apt = read_suite(cache, name, suite, spec.mirror, progress)
        stack: dict = {"name": name, "suite": suite, "mirror": apt.mirror}
        packages = []
        for component in COMPONENTS.values():
            requested = getattr(spec, component.name)
            if requested is None:
                continue  # the host keeps the one it has
            version = resolve(apt, component, requested, f"stacks.{name}.{component.name}")
            stack[component.name] = version
            packages += [f"{p}={version}" for p in (*component.packages, *HOST_EXTRA[component.name])]
        stack["packages"] = packages
    progress(f"stack {name}: the playbook installs " + ", ".join(
        f"{c} {stack[c]}" for c in COMPONENTS if c in stack) + f" from {apt.where}")
    return stack


def playbook_stacks(config, progress: Callable[[str], None]) -> dict[str, dict]:
    """host name -> `lab_stack` for every host whose stack is not `system` (each stack resolved once)."""
    resolved: dict[str, dict] = {}
    for host in config.hosts:
        if host.stack != SYSTEM and host.stack not in resolved:
            resolved[host.stack] = playbook_stack(host.stack, config.stacks[host.stack], progress)
    return {h.name: resolved[h.stack] for h in config.hosts if h.stack != SYSTEM}

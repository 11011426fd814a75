"""Lab backends, registered by name and loaded on demand: each brings hosts up and down
behind the same small interface (lab.backends.base.Backend)."""
from __future__ import annotations

import importlib

from lab.backends.base import Backend, Progress
from lab.config.lab import LabConfig
from lab.errors import BackendError

__all__ = ["Backend", "Progress", "get_backend", "get_fault_injector", "REGISTRY"]

# name -> "module:class"; imported only when chosen (the Vagrant one pulls in python-vagrant).
REGISTRY = {
    "embedded": "lab.backends.embedded.backend:EmbeddedBackend",
    "static": "lab.backends.static.backend:StaticBackend",
    "vagrant": "lab.backends.vagrant.backend:VagrantBackend",
}


def get_backend(config: LabConfig) -> Backend:
    target = REGISTRY.get(config.backend)
    if target is None:
        raise BackendError(f"backend: {config.backend!r} is unknown; use one of {', '.join(REGISTRY)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(config)


# Backends that can break their own hosts on purpose (lab.runtime.faults.FaultInjector).
FAULT_INJECTORS = {"embedded": "lab.backends.embedded.faults:EmbeddedFaults"}


def get_fault_injector(config: LabConfig):
    target = FAULT_INJECTORS.get(config.backend)
    if target is None:
        raise BackendError(f"backend {config.backend!r} cannot inject faults (only {', '.join(FAULT_INJECTORS)})")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(config)

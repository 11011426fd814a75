"""The preflight registry: what a check is, what it returns, and every known check by name.

A check is a plain function over a PreflightContext returning a CheckResult
(name, status, what was seen, a one-line remedy). `@check` registers it; the
order of registration is the order checks run in and the table shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lab.errors import LabError
from lab.preflight.context import PreflightContext

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass(frozen=True)
class CheckResult:
    name: str
    category: str
    status: str
    seen: str
    remedy: str = ""

    def line(self) -> str:
        text = f"{self.name}: {self.status.upper()}: {self.seen}"
        return text + (f" -> {self.remedy}" if self.remedy and self.status in (FAIL, WARN) else "")


CheckFunction = Callable[[PreflightContext], CheckResult]


@dataclass(frozen=True)
class Check:
    name: str
    category: str  # permission, network, storage, resources, vm, parameters, accelerator
    run: CheckFunction
    needs_guest: bool  # only an existing guest can answer it: without one the runner skips it and says so


CHECKS: dict[str, Check] = {}


def check(name: str, category: str, needs_guest: bool = False):
    """Register the decorated function as the check `name`."""
    def register(fn: CheckFunction) -> CheckFunction:
        # Checks live in several modules now: a repeated name would silently replace one of them.
        if name in CHECKS:
            raise LabError(f"preflight check {name!r} registered twice")
        CHECKS[name] = Check(name, category, fn, needs_guest)
        return fn
    return register


def result(name: str, status: str, seen: str, remedy: str = "") -> CheckResult:
    """The result of check `name`, filed under the category it was registered with."""
    return CheckResult(name, CHECKS[name].category, status, seen, remedy)

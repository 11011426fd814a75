"""Preflight: is this host pair ready to live-migrate this guest (or a planned one)?

registry: what a check is and returns, and every check by name; context: the
host pair, guest and expectations a check looks at, built from a Lab; checks/:
the checks by group; runner: runs them in parallel and prints the table or JSON.
Checks only read, but for the shared-storage marker (see checks/storage.py).
"""
from lab.preflight.context import PreflightContext, context_for, nested_need
from lab.preflight.registry import CHECKS, FAIL, PASS, SKIP, WARN, Check, CheckResult, check, result
from lab.preflight.runner import as_json, run_preflight, table

# Imported last, for its side effect: each group registers its checks into CHECKS.
from lab.preflight import checks  # noqa: F401

__all__ = ["CHECKS", "FAIL", "PASS", "SKIP", "WARN", "Check", "CheckResult", "PreflightContext", "as_json",
           "check", "context_for", "nested_need", "result", "run_preflight", "table"]

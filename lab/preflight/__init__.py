"""Preflight: is this host pair ready to live-migrate this guest (or a planned one)?

registry: what a check is and returns, and every check by name; context: the
host pair, the guest or the planned guest, and expectations a check looks at,
built from a Lab; checks/: the checks by group; runner: runs them in parallel
and prints the table or JSON. Checks only read, but for the shared-storage
marker (checks/storage.py), and without a guest a guest-less QEMU asked about
migration parameters and a one-second sample of the migration link
(checks/parameters.py).
"""
from lab.preflight.context import PLAN_KEYS, PlannedGuest, PreflightContext, context_for, nested_need, plan_for
from lab.preflight.registry import CHECKS, FAIL, PASS, SKIP, WARN, Check, CheckResult, check, result
from lab.preflight.runner import NEEDS_A_GUEST, as_json, run_preflight, table

# Imported last, for its side effect: each group registers its checks into CHECKS.
from lab.preflight import checks  # noqa: F401

__all__ = ["CHECKS", "FAIL", "NEEDS_A_GUEST", "PASS", "PLAN_KEYS", "SKIP", "WARN", "Check", "CheckResult",
           "PlannedGuest", "PreflightContext", "as_json", "check", "context_for", "nested_need", "plan_for", "result",
           "run_preflight", "table"]

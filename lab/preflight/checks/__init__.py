"""The preflight checks by group. Importing this package registers every check; the order of the
imports below is the order the checks run in and the table shows."""
from lab.preflight.checks import (  # noqa: F401 - imported to register their checks
    access,
    clock,
    network,
    storage,
    resources,
    compatibility,
    guest,
    parameters,
    accelerator,
)

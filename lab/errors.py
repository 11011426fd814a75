"""One error root for the harness; each subclass names the part that failed.

Every message is one line that says what is wrong and what to do, so the
command line and pytest can print it as is, without a traceback.
"""


class LabError(Exception):
    """Root of every error the harness raises on purpose."""


class ConfigError(LabError):
    """lab.yaml or thresholds.yaml is malformed; the message names the field."""


class MissingToolError(LabError):
    """A tool or package the lab needs is missing on this machine."""


class BackendError(LabError):
    """A lab backend could not bring its hosts up, or tear them down."""


class StateError(LabError):
    """The lab state file is missing, unreadable, or describes another lab."""


class ImageError(LabError):
    """The guest image could not be built."""


class GuestError(LabError):
    """A guest could not be defined, started, reached or removed."""


class AgentTimeout(GuestError):
    """The guest agent did not answer in time."""


class MigrationError(LabError):
    """A migration failed, was aborted, or left the guest in a bad place."""


class PreflightError(LabError):
    """Preflight found the host pair not ready."""


class HotpatchError(LabError):
    """A libcareplus build, apply or unapply failed."""


class StackError(LabError):
    """A hypervisor stack (QEMU + libvirt build) could not be found, fetched, unpacked or used."""


class ReportError(LabError):
    """A run report could not be built: the folder is not a run, or a part of it cannot be written."""

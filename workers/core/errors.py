"""vpgrid's errors, in a module that imports nothing: every error vpgrid can explain is a VpgridError, and the
CLI's one boundary (orchestrator/cli.py) prints its message in one line and exits with its `exit_code`."""


class VpgridError(Exception):
    """An error whose message names the file, field or value and what would be valid: exit 1."""
    exit_code = 1


class UsageError(VpgridError):
    """A command given what it cannot take (an option's value, a table that lacks a model): exit 2."""
    exit_code = 2


class StoreError(VpgridError, RuntimeError):
    """A store that cannot be opened, read or written; the message names it and what to do."""


class LaunchError(VpgridError, RuntimeError):
    """The cluster could not be reached or went away; the message says what to do."""


class ClusterGone(LaunchError):
    """The cluster went away mid-launch: what finished is in the store, the rest is pending (exit 4)."""
    exit_code = 4


class Interrupted(LaunchError):
    """Ctrl-C stopped a launch: what finished is in the store, the rest is pending (exit 4)."""
    exit_code = 4

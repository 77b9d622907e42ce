"""The control plane's errors, in a module that imports nothing heavy: the CLI maps each to one line."""


class StoreError(RuntimeError):
    """A store that cannot be opened, read or written; the message names it and what to do."""


class LaunchError(RuntimeError):
    """The cluster could not be reached or went away; the message says what to do."""


class ClusterGone(LaunchError):
    """The cluster went away mid-launch: what finished is in the store, the rest is pending."""


class Interrupted(LaunchError):
    """Ctrl-C stopped a launch: what finished is in the store, the rest is pending."""

"""Errors that carry one clear, user-facing line.

Every failure a user can cause or meet (bad URL, bad flag, dead server) is raised as a
``ServeDeckError`` subclass; the CLI and the TUI print ``str(err)`` and nothing else.
"""


class ServeDeckError(Exception):
    """Base class: the message is what the user sees, so it must say what to do next."""


class ConfigError(ServeDeckError):
    """Bad configuration, flags or paths."""


class TargetError(ServeDeckError):
    """The target endpoint cannot be reached or answered unexpectedly."""


class DatasetError(ServeDeckError):
    """A dataset is missing, empty, malformed or yields no usable prompts."""


class EngineError(ServeDeckError):
    """The local engine could not be started or died."""

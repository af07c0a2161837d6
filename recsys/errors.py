"""Typed errors for a user's mistakes; the CLI prints them as one line and exits 1."""


class RecsysError(Exception):
    """Base of every error that is the user's input, not a bug."""


class DataError(RecsysError):
    """An interaction log or dataset folder is missing, malformed or empty."""


class ConfigError(RecsysError):
    """An unknown or ill-typed option, in flags or a config file."""


class RunError(RecsysError):
    """A run directory is missing, incomplete, or belongs to another dataset."""

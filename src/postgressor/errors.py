"""Errors the CLI turns into one line and an exit code."""


class PostgressorError(Exception):
    """A failure the user can act on. ``str(err)`` is the whole message: what is wrong, how to fix it."""

    exit_code = 1


class UsageError(PostgressorError):
    """Bad input: a flag, a config value, a missing file. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file or environment is invalid."""

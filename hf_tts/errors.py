"""Exceptions the package raises for bad input.

`InputError` is a `ValueError` so Python callers can catch it the usual way; the CLI turns it into one line on
stderr and exit code 2.
"""


class InputError(ValueError):
    """Bad user input: a wrong file, key, shape, flag or value. The message says what and what to do."""


class CheckpointMismatchError(InputError):
    """A checkpoint's weights do not fit the requested architecture, vocabulary or config."""

"""User-facing errors: one clear sentence that says what is wrong and how to fix it.

The CLI prints a `TuneforgeError` as a single line and exits with code 2 (no traceback unless `--debug`);
the Python API lets it propagate like any exception.

    >>> raise TuneforgeError("data file 'x.txt' does not exist; pass an existing file with --data")
"""


class TuneforgeError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""


class ConfigError(TuneforgeError, ValueError):
    """A run config key or value is wrong."""


class DataError(TuneforgeError, ValueError):
    """A data file is missing, empty or malformed."""


class ModelError(TuneforgeError):
    """A model could not be found or loaded."""

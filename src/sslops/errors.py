"""User-facing errors.

Anything a user can fix (bad data, bad params, a missing file) raises `SslopsError`; the CLI prints its
message as one paragraph and exits non-zero without a stack trace. Everything else is a bug and keeps
its traceback.
"""


class SslopsError(Exception):
    """A problem with the user's data, params or environment, explained in the message."""

    exit_code = 2


class DataValidationError(SslopsError):
    """The data failed one or more Great Expectations checks; downstream stages must not run."""

    exit_code = 1

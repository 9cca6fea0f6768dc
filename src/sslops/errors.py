"""User-facing errors.

Anything a user can fix (bad data, bad params, a missing file) raises `SslopsError`; the CLI prints its
message as one paragraph and exits non-zero without a stack trace. A shared service that does not answer or fails
(a tracking server, its database) raises `ServiceUnavailable`: also one paragraph, but a retry may succeed, so a
flow retries it. Everything else is a bug and keeps its traceback.
"""


class SslopsError(Exception):
    """A problem with the user's data, params or environment, explained in the message."""

    exit_code = 2


class DataValidationError(SslopsError):
    """The data failed one or more Great Expectations checks; downstream stages must not run."""

    exit_code = 1


class ServiceUnavailable(SslopsError):
    """A shared service (a tracking server, the database behind it) does not answer or fails: nothing in the user's
    data or params, so the same run can succeed later. The CLI says `unavailable:` instead of `error:` (a flow retries
    such a stage; it never retries an `error:`)."""

    exit_code = 3

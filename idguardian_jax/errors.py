"""The error every command line turns into one line and exit status 2."""


class UsageError(ValueError):
    """Bad arguments, settings or a job folder that does not match them (exit status 2)."""

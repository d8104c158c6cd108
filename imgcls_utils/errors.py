"""The one base class for problems a user can fix (bad config, bad data, bad model folder)."""


class UserError(ValueError):
    """Reported as a one-line message naming the key or file and what to do, not a traceback."""

"""Problems a user can fix (bad config, bad data, bad model folder), reported without a traceback."""


class UserError(ValueError):
    """Reported as a one-line message naming the key or file and what to do, not a traceback."""


class DataError(UserError):
    """A problem with the input data, naming the file, folder or key and what to do."""
